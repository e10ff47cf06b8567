"""load_prompts on the real files in ../shared/data and on files written here (Eurus schema as JSONL and
parquet, simple JSONL), and every kind of malformed row: the error names the file, the 1-based line and
what is wrong; skip mode leaves exactly the bad rows out and lists them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from primeflow.trainer.data import MATH_SUFFIX, PromptRecord, apply_prime_suffix, load_prompts

DATA = Path("/work/shared/data")
if not DATA.is_dir():
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
RL_JSONL = DATA / "rl" / "eurus2_rl_math_validation_sample.jsonl"
RL_PARQUET = DATA / "rl" / "eurus2_rl_math_validation_sample.parquet"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (the data lives in ../shared/data)")
    return path


def _eurus_row(i: int, *, ability: str = "math") -> dict:
    gt = str(i * 7) if ability == "math" else json.dumps({"inputs": [f"{i}\n"], "outputs": [f"{i + 1}\n"]})
    return {
        "data_source": f"src_{i % 3}",
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}: {i}*7?"}],
        "ability": ability,
        "reward_model": {"ground_truth": gt, "style": "rule"},
        "extra_info": {"index": 0, "split": "dummy"},
    }


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- real files --------------------------------------------------------------------------------------------
def test_real_eurus_sample_jsonl_and_parquet_agree():
    a = load_prompts(_need(RL_JSONL))
    b = load_prompts(_need(RL_PARQUET))
    assert len(a) == len(b) == 200 and not a.skipped and not b.skipped
    raw = [json.loads(line) for line in RL_JSONL.read_text().splitlines()]
    for ra, rb, row in zip(a.records, b.records, raw, strict=True):
        # the loader keeps the row's content exactly (no suffix added: Eurus rows already have one)
        assert ra.messages == rb.messages == [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
        assert ra.ground_truth == rb.ground_truth == row["reward_model"]["ground_truth"]
        assert ra.data_source == rb.data_source == row["data_source"]
        assert ra.ability == rb.ability == "math"
        assert ra.messages[0]["role"] == "system" and ra.messages[-1]["content"].endswith(MATH_SUFFIX)
        assert apply_prime_suffix(ra) == ra  # idempotent on data that already carries the suffix
    assert len({r.uid for r in a.records}) == 200
    assert a.records[0].uid == f"{RL_JSONL.name}:1" and b.records[199].uid == f"{RL_PARQUET.name}:200"


@pytest.mark.parametrize("name,ability,n", [
    ("eval/math500.jsonl", "math", 500), ("eval/aime24.jsonl", "math", 30), ("eval/amc23.jsonl", "math", 40),
    ("code/leetcode_prime.jsonl", "code", 178), ("code/code_contests_test.jsonl", "code", 165),
])
def test_real_simple_files(name, ability, n):
    path = _need(DATA / name)
    loaded = load_prompts(path)
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(loaded) == n == len(raw) and not loaded.skipped
    for rec, row in zip(loaded.records, raw, strict=True):
        assert rec.uid == row["id"] and rec.ability == ability and rec.data_source == row["source"]
        assert rec.messages == [{"role": "user", "content": row["problem"]}]
        if ability == "math":
            assert rec.ground_truth == str(row["answer"])
        else:
            assert json.loads(rec.ground_truth) == row["tests"]


def test_several_files_concatenate_in_order():
    a, b = _need(DATA / "eval/amc23.jsonl"), _need(DATA / "eval/aime24.jsonl")
    both = load_prompts([a, b])
    assert [r.uid for r in both.records] == [r.uid for r in load_prompts(a).records + load_prompts(b).records]


# -- files written here -------------------------------------------------------------------------------------
def test_eurus_schema_jsonl_and_parquet_roundtrip(tmp_path, seed):
    import random

    rng = random.Random(seed)
    rows = [_eurus_row(i, ability=rng.choice(["math", "code"])) for i in range(rng.randint(3, 30))]
    js = _write_jsonl(tmp_path / "x.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    a, b = load_prompts(js), load_prompts(tmp_path / "x.parquet")
    for ra, rb, row in zip(a.records, b.records, rows, strict=True):
        for r in (ra, rb):
            assert r.ability == row["ability"] and r.data_source == row["data_source"]
            assert r.messages == row["prompt"] and r.ground_truth == row["reward_model"]["ground_truth"]
    assert len(a) == len(b) == len(rows)


def test_simple_jsonl_ids_numbers_and_blank_lines(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [
        {"problem": "1+1=", "answer": "2"},
        "",
        {"problem": "2+3=", "answer": 5, "id": "p2"},
        {"problem": "half", "answer": 0.5, "id": 7, "source": "mine"},
        {"problem": "echo", "tests": {"inputs": ["a\n"], "outputs": ["a\n"]}},
    ])
    recs = load_prompts(path).records
    assert [r.uid for r in recs] == ["s.jsonl:1", "p2", "7", "s.jsonl:5"]
    assert [r.ground_truth for r in recs[:3]] == ["2", "5", "0.5"]
    assert [r.data_source for r in recs] == ["s", "s", "mine", "s"]
    assert [r.ability for r in recs] == ["math", "math", "math", "code"]
    assert isinstance(recs[0], PromptRecord)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recs[0].uid = "x"
    assert len({*recs, *load_prompts(path).records}) == 4  # hashable (by uid), equal records collapse


# -- malformed rows -----------------------------------------------------------------------------------------
def _bad(row_or_text, expect: str):
    return pytest.param(row_or_text, expect, id=expect[:40])


def _mutated(mutate):
    row = _eurus_row(1)
    mutate(row)
    return row


BAD_ROWS = [
    _bad('{"problem": "1+1=", "answer": "2"', "not valid JSON"),
    _bad("[1, 2]", "must be a JSON object"),
    _bad({"question": "x"}, "neither 'prompt'"),
    _bad(_mutated(lambda r: r.pop("data_source")), "missing field 'data_source'"),
    _bad(_mutated(lambda r: r.update(data_source=3)), "field 'data_source' must be str, got int"),
    _bad(_mutated(lambda r: r.update(prompt="hi")), "field 'prompt' must be a non-empty list"),
    _bad(_mutated(lambda r: r.update(prompt=[])), "field 'prompt' must be a non-empty list"),
    _bad(_mutated(lambda r: r["prompt"].__setitem__(1, {"role": "bot", "content": "x"})), "prompt[1].role"),
    _bad(_mutated(lambda r: r["prompt"].__setitem__(1, {"role": "user", "content": 5})),
         "prompt[1].content must be a str"),
    _bad(_mutated(lambda r: r["prompt"].reverse()), "prompt[1] is a system message"),
    _bad(_mutated(lambda r: r["prompt"].append({"role": "assistant", "content": "a"})), "last prompt message"),
    _bad(_mutated(lambda r: r.update(ability="bio")), "field 'ability' must be one of ['math', 'code']"),
    _bad(_mutated(lambda r: r.pop("reward_model")), "missing field 'reward_model'"),
    _bad(_mutated(lambda r: r["reward_model"].pop("ground_truth")), "missing field 'reward_model.ground_truth'"),
    _bad(_mutated(lambda r: r["reward_model"].update(ground_truth=7)), "'reward_model.ground_truth' must be a str"),
    _bad(_mutated(lambda r: r.update(ability="code")), "code tests must be an object"),
    _bad(_mutated(lambda r: (r.update(ability="code"), r["reward_model"].update(ground_truth="{not json"))),
         "code ground_truth is not valid JSON"),
    _bad(_mutated(lambda r: (r.update(ability="code"), r["reward_model"].update(
        ground_truth='{"inputs": ["1"], "outputs": []}'))), "as many outputs as inputs"),
    _bad({"problem": "1+1="}, "exactly one of 'answer' (math) or 'tests' (code)"),
    _bad({"problem": 3, "answer": "3"}, "field 'problem' must be str, got int"),
    _bad({"problem": "x", "answer": True}, "field 'answer' must be str or int or float, got bool"),
    _bad({"problem": "x", "answer": ""}, "field 'answer' is empty"),
    _bad({"problem": "x", "answer": "1", "id": [1]}, "field 'id' must be a str or int"),
]


@pytest.mark.parametrize("bad,expect", BAD_ROWS)
def test_malformed_row_names_file_line_and_problem(tmp_path, bad, expect):
    good = [{"problem": f"{i}+1=", "answer": str(i + 1)} for i in range(3)]
    path = _write_jsonl(tmp_path / "bad.jsonl", [good[0], good[1], bad, good[2]])
    with pytest.raises(ValueError) as err:
        load_prompts(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: "), msg
    assert expect in msg, msg
    loaded = load_prompts(path, on_error="skip")
    assert [r.ground_truth for r in loaded.records] == ["1", "2", "3"]
    assert len(loaded.skipped) == 1 and loaded.skipped[0][:2] == (str(path), 3) and expect in loaded.skipped[0][2]


def test_skip_mode_counts_every_bad_row(tmp_path, seed):
    import random

    rng = random.Random(seed)
    rows, bad_lines = [], []
    for line in range(1, 61):
        if rng.random() < 0.3:
            rows.append(BAD_ROWS[rng.randrange(len(BAD_ROWS))].values[0])
            bad_lines.append(line)
        else:
            rows.append(_eurus_row(line))
    path = _write_jsonl(tmp_path / "mixed.jsonl", rows)
    loaded = load_prompts(path, on_error="skip")
    assert [s[1] for s in loaded.skipped] == bad_lines
    assert len(loaded.records) + len(bad_lines) == 60
    assert {r.uid for r in loaded.records} == {f"mixed.jsonl:{i}" for i in range(1, 61) if i not in bad_lines}
    if bad_lines:
        with pytest.raises(ValueError, match=rf"mixed\.jsonl:{bad_lines[0]}: "):
            load_prompts(path)


def test_malformed_parquet_row_names_row(tmp_path):
    rows = [_eurus_row(i) for i in range(4)]
    rows[2]["ability"] = "chemistry"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet: row 3: field 'ability' must be one of"):
        load_prompts(tmp_path / "p.parquet")
    assert len(load_prompts(tmp_path / "p.parquet", on_error="skip").records) == 3


def test_invalid_utf8_and_duplicate_ids(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"problem": "a", "answer": "1"}\n{"problem": "\xff", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"u\.jsonl:2: not valid UTF-8"):
        load_prompts(path)
    dup = _write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "answer": "1", "id": "x"},
                                               {"problem": "b", "answer": "2", "id": "x"}])
    with pytest.raises(ValueError, match=r"d\.jsonl:2: duplicate uid 'x' \(first seen at .*d\.jsonl:1\)"):
        load_prompts(dup)


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"suffix '\.csv'; supported: \['\.jsonl', '\.parquet'\]"):
        load_prompts(tmp_path / "x.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="broken.parquet: cannot read as parquet"):
        load_prompts(tmp_path / "broken.parquet")
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        load_prompts(_write_jsonl(tmp_path / "ok.jsonl", [{"problem": "a", "answer": "1"}]), on_error="ignore")
