"""Scripted completions with a known correctness pattern: metrics, the Avg column, the table, the JSON,
``run_validation`` keys, comparison rows, model-directory resolution and CLI errors (all hand-computed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from primeflow.trainer.evaluation import (
    ModelResult,
    PromptBuilder,
    SamplingSettings,
    ScriptedBackend,
    evaluate_records,
    load_benchmark,
    main,
    markdown_table,
    parse_model_arg,
    resolve_hf_dir,
    run_validation,
    write_outputs,
)

# per benchmark: (answer, pattern of the 4 samples: 1 = correct)
PATTERNS = {
    "aime24": [("2", [1, 0, 0, 0]), ("4", [1, 1, 1, 1]), ("\\frac{1}{2}", [0, 0, 0, 0])],
    "amc23": [("10", [1, 1, 0, 0]), ("12", [0, 0, 0, 1])],
}
# Hand-computed from the patterns (c = correct samples of 4):
#   aime24 c = 1, 4, 0: avg@4 = (1/4 + 1 + 0)/3 = 5/12; pass@2 = (1 - C(3,2)/C(4,2) = 1/2, 1, 0)/3 = 1/2;
#                       pass@4 = (1 + 1 + 0)/3 = 2/3
#   amc23  c = 2, 1:    avg@4 = (1/2 + 1/4)/2 = 3/8; pass@2 = (1 - C(2,2)/C(4,2) = 5/6, 1/2)/2 = 2/3; pass@4 = 1
#   Avg of avg@4 = (5/12 + 3/8)/2 = 19/48 = 39.58%
EXPECTED = {
    "aime24": {"avg@4": 5 / 12, "pass@1": 5 / 12, "pass@2": 1 / 2, "pass@4": 2 / 3, "n_problems": 3},
    "amc23": {"avg@4": 3 / 8, "pass@1": 3 / 8, "pass@2": 2 / 3, "pass@4": 1.0, "n_problems": 2},
}
SETTINGS = SamplingSettings(samples=4, temperature=0.5, top_p=0.9, max_tokens=64, seed=7)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    for name, rows in PATTERNS.items():
        path = tmp_path / "eval" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(
                json.dumps({"id": f"{name}/{i}", "problem": f"Problem {name} {i}: compute it.", "answer": a}) + "\n"
                for i, (a, _) in enumerate(rows)
            )
        )
    return tmp_path


def _scripted(data_dir: Path, render) -> ScriptedBackend:
    table = {}
    for name, rows in PATTERNS.items():
        for rec, (answer, pattern) in zip(load_benchmark(name, data_dir), rows, strict=True):
            # wrong samples box a nearby value; the right answer also appears unboxed in them
            table[render(rec)] = [
                f"So $\\boxed{{{answer}}}$." if ok else f"Not {answer}. $\\boxed{{{answer}+1}}$" for ok in pattern
            ]
    return ScriptedBackend(table)


def _evaluate(data_dir: Path) -> tuple[list, ScriptedBackend]:
    render = PromptBuilder(None, "none")
    backend = _scripted(data_dir, render)
    results = [evaluate_records(backend, name, load_benchmark(name, data_dir), render, SETTINGS) for name in PATTERNS]
    return results, backend


def test_metrics_table_and_json(data_dir, tmp_path):
    results, backend = _evaluate(data_dir)
    assert [c["n"] for c in backend.calls] == [4, 4]
    assert {(c["temperature"], c["top_p"], c["max_tokens"], c["seed"]) for c in backend.calls} == {(0.5, 0.9, 64, 7)}
    for res in results:
        assert res.metrics.keys() == EXPECTED[res.benchmark].keys()
        for key, value in EXPECTED[res.benchmark].items():
            assert res.metrics[key] == pytest.approx(value, rel=1e-12), (res.benchmark, key)  # float sums only
        got = [[int(x) for x in p["correct"]] for p in res.problems]
        assert got == [pattern for _, pattern in PATTERNS[res.benchmark]]

    perfect = ModelResult(
        "perfect",
        None,
        None,
        [type(r)(r.benchmark, {**r.metrics, "avg@4": 1.0}, r.problems, r.seconds) for r in results],
    )
    models = [ModelResult("policy", "/x/run/checkpoints/step_80/policy_hf", 80, results), perfect]
    table = markdown_table(models, list(PATTERNS), SETTINGS)
    assert table.splitlines()[2:] == [
        "| Model | Step | AIME24 | AMC | Avg |",
        "|---|---|---|---|---|",
        "| policy | 80 | 41.7 | 37.5 | 39.6 |",
        "| perfect | - | 100.0 | 100.0 | 100.0 |",
    ]
    assert table.startswith(
        "Accuracy (%), avg@4, temperature 0.5, top_p 0.9, max_tokens 64, seed 7. Problems: AIME24 3, AMC 2."
    )

    out = tmp_path / "out"
    paths = write_outputs(out, models, list(PATTERNS), SETTINGS)
    md = (out / "results.md").read_text()
    assert md.startswith(table + "\n") and "- system prompt: prime" in md  # then the settings that change scores
    summary = json.loads(paths["summary"].read_text())
    assert summary["metric"] == "avg@4" and summary["benchmarks"] == ["aime24", "amc23"]
    assert summary["models"][0]["avg"]["avg@4"] == pytest.approx(19 / 48, rel=1e-12)
    assert summary["models"][0]["problems_dir"] == "policy_step80"
    per = json.loads((out / "policy_step80" / "aime24.json").read_text())
    p0 = per["problems"][0]
    assert p0["id"] == "aime24/0" and p0["reference"] == "2"
    assert (
        p0["prompt"] == "<|im_start|>user\nProblem aime24 0: compute it.\n\nPresent the answer in LaTex format: "
        "\\boxed{Your answer}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert p0["extracted"] == ["2", "2+1", "2+1", "2+1"] and p0["scores"] == [1.0, 0.0, 0.0, 0.0]
    assert per["settings"]["samples"] == 4 and per["step"] == 80


def test_run_validation_flat_keys(data_dir):
    render = PromptBuilder(None, "none")
    records = load_benchmark("aime24", data_dir) + load_benchmark("amc23", data_dir)
    got = run_validation(
        _scripted(data_dir, render),
        records,
        render=render,
        samples=4,
        temperature=0.5,
        top_p=0.9,
        max_tokens=64,
        seed=7,
    )
    expected = {f"val/{b}/{k}": v for b, m in EXPECTED.items() for k, v in m.items() if k != "n_problems"}
    expected["val/avg/avg@4"] = 19 / 48
    timing = {k for k in got if k.startswith("val/time/")}
    assert timing == {"val/time/generate", "val/time/score"}
    assert got.keys() - timing == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_sampling_settings_validation():
    with pytest.raises(ValueError, match="greedy samples are identical"):
        SamplingSettings(samples=4, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(samples=1, temperature=0.3, top_p=0.0)
    with pytest.raises(ValueError, match="samples must be"):
        SamplingSettings(samples=0)


def test_backend_output_shape_is_checked(data_dir):
    class Short:
        def generate(self, prompts, n, temperature, top_p, max_tokens, seed):
            return [["x"] * (n - 1) for _ in prompts]

    with pytest.raises(ValueError, match="prompt 0: expected a list of 4 strings"):
        evaluate_records(Short(), "aime24", load_benchmark("aime24", data_dir), PromptBuilder(None), SETTINGS)


def _hf(path: Path, weights: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


def test_model_dir_resolution(tmp_path):
    hf = _hf(tmp_path / "plain_model")
    run = tmp_path / "run"
    _hf(run / "checkpoints" / "step_9" / "policy_hf")
    latest = _hf(run / "checkpoints" / "step_10" / "policy_hf")
    assert resolve_hf_dir(hf) == hf
    assert resolve_hf_dir(run) == latest  # 10 > 9 numerically, not as strings
    assert resolve_hf_dir(run / "checkpoints" / "step_9") == run / "checkpoints" / "step_9" / "policy_hf"
    assert (parse_model_arg(str(run)).label, parse_model_arg(str(run)).step) == ("run", 10)
    spec = parse_model_arg(f"sft={hf}")
    assert (spec.label, spec.step, spec.path) == ("sft", None, hf)

    # `primeflow export` layout: RUN/export/step_N/policy; a newer export wins over older checkpoints
    exported = _hf(run / "export" / "step_12" / "policy")
    assert resolve_hf_dir(run) == exported
    assert resolve_hf_dir(run / "export" / "step_12") == exported
    assert (parse_model_arg(str(run / "export" / "step_12")).label, parse_model_arg(str(run)).step) == ("run", 12)

    # a training checkpoint holds Megatron shards (and config-only HF side files): say how to export it
    shards = run / "checkpoints" / "step_20"
    _hf(shards / "hf" / "policy", weights=False)
    with pytest.raises(FileNotFoundError, match=r"primeflow export --run-dir .*run --step 20"):
        resolve_hf_dir(shards)
    with pytest.raises(FileNotFoundError, match="not a model"):
        resolve_hf_dir(shards / "hf" / "policy")  # config.json alone is not a model
    with pytest.raises(FileNotFoundError, match="export/step_N/policy/"):
        resolve_hf_dir(tmp_path / "plain_model" / "..")


def test_cli_errors(data_dir, tmp_path, capsys):
    assert main(["--benchmarks", "aime24", "--data-dir", str(data_dir)]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["--backend", "oracle", "--benchmarks", "minerva", "--data-dir", str(data_dir)]) == 2
    assert str(data_dir / "eval" / "minerva_math.jsonl") in capsys.readouterr().err
    assert main(["--backend", "oracle", "--samples", "4", "--data-dir", str(data_dir)]) == 2
    assert "greedy samples are identical" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing"), "--benchmarks", "aime24", "--data-dir", str(data_dir)]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_an_unwritable_out_fails_first_in_one_line(tmp_path, capsys):
    """--out is checked before any data is read or any engine starts (here the data dir does not even
    exist, so a late check would have reported the data instead); nothing is left behind."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["--backend", "oracle", "--benchmarks", "aime24", "--data-dir", str(tmp_path / "no_data"),
            "--out", str(blocker / "results")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {blocker / 'results'}: cannot write there" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_cli_oracle_on_a_user_data_dir(data_dir, tmp_path):
    out = tmp_path / "o"
    assert (
        main(
            [
                "--backend",
                "oracle",
                "--benchmarks",
                "aime24,amc23",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--limit",
                "2",
            ]
        )
        == 0
    )
    summary = json.loads((out / "results.json").read_text())
    assert summary["models"][0]["metrics"]["aime24"] == {"avg@1": 1.0, "pass@1": 1.0, "n_problems": 2}


def test_backend_prompt_error_names_the_problem(data_dir):
    class TooLong:
        def generate(self, prompts, n, temperature, top_p, max_tokens, seed):
            raise ValueError("prompt 1 has 900 tokens but at most 500 fit")

    records = load_benchmark("aime24", data_dir)
    with pytest.raises(ValueError, match=r"^aime24: prompt 1 has 900 tokens .* \(prompt 1 is problem 'aime24/1'\)"):
        evaluate_records(TooLong(), "aime24", records, PromptBuilder(None), SamplingSettings())
