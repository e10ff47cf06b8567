"""Child process for test_vllm_eval.py: one vLLM import for both phases (keeps the test's cost down).

1. ``primeflow eval`` as a user runs it (``primeflow.trainer.evaluation.main(argv)``, what the CLI dispatches
   to), two models side by side.
2. Periodic validation as the trainer runs it: ``run_validation`` over a ``RolloutEngineBackend`` wrapping a
   RolloutEngine, sampled (temperature 1), twice with the same seed and once with another.

Optionally ``fit_argv``: a second ``primeflow eval`` (its exit code is ``fit_rc``).

Input: JSON on stdin ``{"eval_argv": [...], "model": DIR, "data_dir": DIR, "limit": N[, "fit_argv": [...]]}``;
the last stdout line is JSON with the exit codes, the validation metrics and the completions.
"""

from __future__ import annotations

import json
import os
import sys


def _main() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from primeflow.trainer.evaluation import (
        PromptBuilder,
        SamplingSettings,
        evaluate_records,
        load_benchmark,
        main,
        run_validation,
    )
    from primeflow.trainer.evaluation.vllm_backend import RolloutEngineBackend
    from primeflow.trainer.rollout import RolloutEngine
    from transformers import AutoTokenizer

    req = json.loads(sys.stdin.read())
    rc = main(req["eval_argv"])
    fit_rc = main(req["fit_argv"]) if "fit_argv" in req else None  # a second engine: a short-context model

    engine = RolloutEngine(req["model"], dtype="float32", max_model_len=1024, seed=0)
    backend = RolloutEngineBackend(engine)
    render = PromptBuilder(AutoTokenizer.from_pretrained(req["model"]), "none")
    records = load_benchmark("amc23", req["data_dir"], limit=req["limit"])
    kwargs = dict(render=render, samples=4, temperature=1.0, top_p=1.0, max_tokens=8)
    metrics = run_validation(backend, records, seed=3, **kwargs)
    runs = []
    for seed in (3, 3, 4):
        res = evaluate_records(backend, "amc23", records, render, SamplingSettings(4, 1.0, 1.0, 8, seed))
        runs.append([p["completions"] for p in res.problems])
    print(json.dumps({"rc": rc, "fit_rc": fit_rc, "metrics": metrics, "runs": runs}))


if __name__ == "__main__":
    _main()
