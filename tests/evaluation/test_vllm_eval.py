"""End to end with a real engine: `primeflow eval` on tiny checkpoints through vLLM (CPU), 10 AMC problems,
two models side by side (a run directory resolved to its latest checkpoint, and an HF directory); then
``run_validation`` over the trainer's RolloutEngine as periodic validation would call it.

vLLM runs in one child process (vllm_child.py), so its distributed state never leaks into other tests.
Independent checks: the prompts are the tokenizer's chat template applied to PRIME's message, and the greedy
completions equal transformers' greedy decoding of the same prompts (the completions belong to
the right problems and model).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from primeflow.models import make_tiny_checkpoint
from primeflow.trainer.evaluation import BenchmarkDataError, load_benchmark, resolve_data_dir
from primeflow.trainer.evaluation.prompts import MATH_SUFFIX

pytestmark = pytest.mark.vllm
MAX_TOKENS = 8
LIMIT = 10
GREEDY_CHECKS = 4  # problems decoded again with transformers (its CPU generate is the slow part)
VAL_LIMIT = 3  # problems in the periodic-validation phase
SHORT_CONTEXT, FIT_LIMIT = 256, 3  # the context-fitting case: a short-context model, a few problems


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    try:
        data_dir = resolve_data_dir(None)
    except BenchmarkDataError as e:
        pytest.skip(f"benchmark data not found ({e})")
    root = tmp_path_factory.mktemp("eval_vllm")
    run_dir = root / "myrun"
    make_tiny_checkpoint(run_dir / "checkpoints" / "step_2" / "policy_hf", seed=3)  # older: must not be picked
    latest = make_tiny_checkpoint(run_dir / "checkpoints" / "step_10" / "policy_hf", seed=4)
    other = make_tiny_checkpoint(root / "sft_model", seed=5)
    out = root / "out"
    argv = [
        "--model",
        str(run_dir),
        "--compare",
        f"sft={other}",
        "--benchmarks",
        "amc23",
        "--limit",
        str(LIMIT),
        "--max-tokens",
        str(MAX_TOKENS),
        "--system-prompt",
        "none",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--dtype",
        "float32",
    ]
    # issue 19: a 256-token context, default --max-tokens, prompts (PRIME system prompt) longer than fit
    short_ctx = make_tiny_checkpoint(root / "short_ctx", seed=6, max_position_embeddings=SHORT_CONTEXT)
    fit_argv = ["--model", str(short_ctx), "--benchmarks", "amc23", "--limit", str(FIT_LIMIT), "--long-prompts",
                "truncate", "--data-dir", str(data_dir), "--out", str(root / "fit_out"), "--dtype", "float32"]
    request = {"eval_argv": argv, "model": str(latest), "data_dir": str(data_dir), "limit": VAL_LIMIT,
               "fit_argv": fit_argv}
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("vllm_child.py"))],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["rc"] == 0, proc.stderr[-4000:]
    return {
        "out": out,
        "stdout": proc.stdout,
        "models": {"myrun": latest, "sft": other},
        "data_dir": data_dir,
        "child": child,
        "fit_out": root / "fit_out",
    }


def test_writes_table_and_json(evaluated):
    out = evaluated["out"]
    summary = json.loads((out / "results.json").read_text())
    assert [(m["label"], m["step"]) for m in summary["models"]] == [("myrun", 10), ("sft", None)]
    assert summary["models"][0]["path"].endswith("step_10/policy_hf")
    table = (out / "results.md").read_text()
    assert table in evaluated["stdout"]
    lines = table.splitlines()
    assert lines[2] == "| Model | Step | AMC | Avg |"
    rows = [line for line in lines if line.startswith("| myrun") or line.startswith("| sft")]
    assert len(rows) == 2
    for m, row in zip(summary["models"], rows, strict=True):
        value = m["metrics"]["amc23"]["avg@1"]
        assert m["metrics"]["amc23"]["n_problems"] == LIMIT
        assert (
            row == f"| {m['label']} | {m['step'] if m['step'] is not None else '-'} | {100 * value:.1f} | "
            f"{100 * value:.1f} |"
        )
        problems = json.loads((out / m["problems_dir"] / "amc23.json").read_text())["problems"]
        assert value == sum(p["scores"][0] for p in problems) / LIMIT
        for p in problems:
            assert set(p) == {"id", "prompt", "reference", "completions", "extracted", "scores", "correct"}
            assert len(p["completions"]) == 1 and p["scores"][0] in (0.0, 1.0)


@pytest.mark.parametrize("label", ["myrun", "sft"])
def test_prompts_and_greedy_completions_match_transformers(evaluated, label):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = evaluated["models"][label]
    summary = json.loads((evaluated["out"] / "results.json").read_text())
    (row,) = [m for m in summary["models"] if m["label"] == label]
    problems = json.loads((evaluated["out"] / row["problems_dir"] / "amc23.json").read_text())["problems"]
    records = load_benchmark("amc23", evaluated["data_dir"], limit=LIMIT)
    assert [p["id"] for p in problems] == [r.id for r in records]
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    for i, (r, p) in enumerate(zip(records, problems, strict=True)):
        messages = [{"role": "user", "content": r.problem + MATH_SUFFIX}]
        assert p["prompt"] == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert p["reference"] == r.answer
        if i >= GREEDY_CHECKS:
            continue
        ids = torch.tensor([tok.encode(p["prompt"], add_special_tokens=False)])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tok.eos_token_id)
        expected = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
        assert p["completions"] == [expected], r.id  # both decoded by the HF tokenizer: same tokens
    assert re.search(r"Accuracy \(%\), pass@1, greedy, max_tokens 8", (evaluated["out"] / "results.md").read_text())


def test_run_validation_on_a_rollout_engine(evaluated):
    child = evaluated["child"]
    metrics = child["metrics"]
    keys = {
        "val/amc23/avg@4",
        "val/amc23/pass@1",
        "val/amc23/pass@2",
        "val/amc23/pass@4",
        "val/avg/avg@4",
        "val/time/generate",
        "val/time/score",
    }
    assert set(metrics) == keys
    assert metrics["val/avg/avg@4"] == metrics["val/amc23/avg@4"] == metrics["val/amc23/pass@1"]
    assert 0.0 <= metrics["val/amc23/pass@1"] <= metrics["val/amc23/pass@2"] <= metrics["val/amc23/pass@4"] <= 1.0
    same_a, same_b, other = child["runs"]
    assert len(same_a) == VAL_LIMIT and all(len(c) == 4 for c in same_a)
    assert same_a == same_b  # per-row seeds: the same seed reproduces every sample
    assert same_a != other  # a different seed samples differently (random weights, temperature 1, 8 tokens)
    # the 4 samples of a problem are not copies of one sample (each row has its own seed)
    assert all(len(set(c)) > 1 for c in same_a)


def test_default_max_tokens_and_truncation_on_a_real_engine(evaluated):
    """The old default (--max-tokens 4096) failed on a short-context model once vLLM was up; now the budget is
    fitted (half the context here: every prompt is longer than the rest) and vLLM truncates the prompts."""
    assert evaluated["child"]["fit_rc"] == 0
    summary = json.loads((evaluated["fit_out"] / "results.json").read_text())
    assert summary["settings"]["max_tokens"] == SHORT_CONTEXT // 2
    assert summary["long_prompts"] == "truncate"
    (row,) = summary["models"]
    assert row["context_length"] == SHORT_CONTEXT
    assert row["long_prompts"]["amc23"]["count"] == FIT_LIMIT  # the PRIME system prompt alone is > 128 tokens
    assert row["metrics"]["amc23"]["n_problems"] == FIT_LIMIT
    md = (evaluated["fit_out"] / "results.md").read_text()
    assert f"context {SHORT_CONTEXT}, long prompts (truncate): AMC {FIT_LIMIT}" in md, md
