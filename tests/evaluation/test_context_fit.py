"""`primeflow eval` fits each model's context length before any engine starts (issue 19, Build 5).

Real tiny checkpoints and tokenizers (`make_tiny_checkpoint`, context 1024 unless overridden); the vLLM engine
is replaced by `FakeEngine`, which enforces the engine's own limits (prompt + max_tokens within
max_model_len unless built with truncate_prompts) and records how it was built, so these tests run in a second
and prove that user errors come before an engine would start. One real-vLLM case is in test_vllm_eval.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from primeflow.models import make_tiny_checkpoint
from primeflow.trainer.evaluation import main
from primeflow.trainer.evaluation import vllm_backend as vllm_backend_module
from transformers import AutoTokenizer

SHORT = ["What is $1+1$?", "Compute $2 \\cdot 3$.", "Find $x$ if $x - 4 = 0$."]
LONG = "Consider the following long setup. " * 60  # ~2,100 byte-level tokens: longer than any 1024 context


class FakeEngine:
    """Stands in for VLLMBackend: built with the same keywords, fails like RolloutEngine on a prompt that
    does not fit (the messages are the engine's), answers every prompt with a boxed 2."""

    built: list[dict] = []
    calls: list[dict] = []

    def __init__(self, model_dir, *, tp_size=1, dtype="auto", max_model_len=None, seed=0, truncate_prompts=False):
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.max_model_len = max_model_len or json.loads((Path(model_dir) / "config.json").read_text())[
            "max_position_embeddings"
        ]
        self.truncate = truncate_prompts
        FakeEngine.built.append({"model": str(model_dir), "max_model_len": max_model_len,
                                 "truncate_prompts": truncate_prompts})

    def generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        if max_tokens >= self.max_model_len:
            raise ValueError(f"SamplingConfig.max_tokens={max_tokens} leaves no room for a prompt: it must be < "
                             f"max_model_len={self.max_model_len}")
        lengths = [len(self.tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
        for i, length in enumerate(lengths):
            if length + max_tokens > self.max_model_len and not self.truncate:
                raise ValueError(f"prompt {i} has {length} tokens but at most {self.max_model_len - max_tokens} fit")
        FakeEngine.calls.append({"n_prompts": len(prompts), "max_tokens": max_tokens, "lengths": lengths})
        return [["So $\\boxed{2}$."] * n for _ in prompts]

    def close(self) -> None:
        pass


@pytest.fixture
def fake_engine(monkeypatch):
    FakeEngine.built, FakeEngine.calls = [], []
    monkeypatch.setattr(vllm_backend_module, "VLLMBackend", FakeEngine)
    return FakeEngine


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("fit") / "model", seed=1)  # context 1024


def _data(root: Path, problems: list[str]) -> Path:
    path = root / "data" / "eval" / "amc23.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"amc23/{i}", "problem": p, "answer": "2"}) + "\n"
                            for i, p in enumerate(problems)))
    return root / "data"


def _argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--benchmarks", "amc23", "--data-dir", str(data), "--out", str(out), *extra]


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("primeflow eval: error: "), err
    return err


def test_default_max_tokens_fits_a_1024_context(model, tmp_path, fake_engine, capsys):
    """The old default (4096) failed on this model after vLLM start-up, naming SamplingConfig."""
    out = tmp_path / "out"
    assert main(_argv(model, _data(tmp_path, SHORT), out)) == 0, capsys.readouterr().err
    (call,) = fake_engine.calls
    assert call["max_tokens"] == 1024 - max(call["lengths"])  # min(4096, context - longest prompt)
    summary = json.loads((out / "results.json").read_text())
    assert summary["settings"]["max_tokens"] == call["max_tokens"]
    assert summary["models"][0]["context_length"] == 1024


def test_a_too_large_max_tokens_names_the_flag_and_the_context(model, tmp_path, fake_engine, capsys):
    assert main(_argv(model, _data(tmp_path, SHORT), tmp_path / "out", "--max-tokens", "4096")) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--max-tokens 4096" in err and "context length 1024" in err and "SamplingConfig" not in err, err
    assert fake_engine.built == []  # refused before an engine was built


def test_a_max_model_len_beyond_the_checkpoint_is_refused(model, tmp_path, fake_engine, capsys):
    assert main(_argv(model, _data(tmp_path, SHORT), tmp_path / "out", "--max-model-len", "4096")) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--max-model-len 4096" in err and "1024" in err, err
    assert fake_engine.built == []


def test_a_smaller_max_model_len_sets_the_context(model, tmp_path, fake_engine, capsys):
    out = tmp_path / "out"
    rc = main(_argv(model, _data(tmp_path, SHORT), out, "--max-model-len", "512", "--system-prompt", "none"))
    assert rc == 0, capsys.readouterr().err
    assert fake_engine.built[0]["max_model_len"] == 512
    (call,) = fake_engine.calls
    assert call["max_tokens"] == 512 - max(call["lengths"])
    assert json.loads((out / "results.json").read_text())["models"][0]["context_length"] == 512


def test_long_prompts_are_skipped_by_default_and_counted(model, tmp_path, fake_engine, capsys):
    """One over-long prompt used to abort the whole benchmark. The default budget is at least half the
    context (a 2,100-token prompt must not shrink it to nothing); the long prompt is skipped, not scored."""
    out = tmp_path / "out"
    assert main(_argv(model, _data(tmp_path, [*SHORT, LONG]), out)) == 0, capsys.readouterr().err
    assert "1 of 4 prompts" in capsys.readouterr().err  # a warning says so
    (call,) = fake_engine.calls
    assert call["n_prompts"] == 3 and call["max_tokens"] == 512
    assert fake_engine.built[0]["truncate_prompts"] is False
    summary = json.loads((out / "results.json").read_text())
    assert summary["long_prompts"] == "skip"
    row = summary["models"][0]
    assert row["long_prompts"] == {"amc23": {"count": 1, "ids": ["amc23/3"]}}
    assert row["metrics"]["amc23"]["n_problems"] == 3 and row["metrics"]["amc23"]["avg@1"] == 1.0
    per = json.loads((out / row["problems_dir"] / "amc23.json").read_text())
    assert per["long_prompts"] == {"policy": "skip", "count": 1, "ids": ["amc23/3"]}


def test_long_prompts_truncate(model, tmp_path, fake_engine, capsys):
    out = tmp_path / "out"
    argv = _argv(model, _data(tmp_path, [*SHORT, LONG]), out, "--long-prompts", "truncate")
    assert main(argv) == 0, capsys.readouterr().err
    assert fake_engine.built[0]["truncate_prompts"] is True
    (call,) = fake_engine.calls
    assert call["n_prompts"] == 4
    row = json.loads((out / "results.json").read_text())["models"][0]
    assert row["long_prompts"] == {"amc23": {"count": 1, "ids": ["amc23/3"]}}
    assert row["metrics"]["amc23"]["n_problems"] == 4


def test_long_prompts_error_is_one_line_before_the_engine(model, tmp_path, fake_engine, capsys):
    argv = _argv(model, _data(tmp_path, [*SHORT, LONG]), tmp_path / "out", "--long-prompts", "error")
    assert main(argv) == 2
    err = _one_line(capsys.readouterr().err)
    assert "'amc23/3'" in err and "--long-prompts" in err, err
    assert fake_engine.built == []


def test_every_prompt_too_long_is_an_error(model, tmp_path, fake_engine, capsys):
    assert main(_argv(model, _data(tmp_path, [LONG]), tmp_path / "out")) == 2
    err = _one_line(capsys.readouterr().err)
    assert "amc23" in err and "--max-model-len" in err, err
    assert fake_engine.built == []


def test_results_record_the_settings_that_change_scores(model, tmp_path, fake_engine, capsys):
    out = tmp_path / "out"
    argv = _argv(model, _data(tmp_path, [*SHORT, LONG]), out, "--system-prompt", "none", "--samples", "2",
                 "--temperature", "0.3", "--top-p", "0.95", "--seed", "5")
    assert main(argv) == 0, capsys.readouterr().err
    md = (out / "results.md").read_text()
    assert md in capsys.readouterr().out  # the printed text is the file
    for piece in ("system prompt: none", "samples 2, temperature 0.3, top_p 0.95, seed 5", "max_tokens 512",
                  "context 1024", "skip", "AMC 1"):
        assert piece in md, (piece, md)
    summary = json.loads((out / "results.json").read_text())
    assert summary["system_prompt"] == "none" and summary["long_prompts"] == "skip"
    assert summary["settings"] == {"samples": 2, "temperature": 0.3, "top_p": 0.95, "max_tokens": 512, "seed": 5}
