"""Benchmark evaluation (``primeflow eval``) and the trainer's periodic validation.

- ``main(argv) -> int``: the CLI (see ``cli.py`` for options and examples).
- ``run_validation(backend, records, *, render, samples=1, temperature=0.0, top_p=1.0, max_tokens=1024,
  seed=0, prefix="val") -> dict[str, float]``: flat metrics such as ``val/math500/avg@1``.
- ``load_benchmark(name, data_dir=None, *, limit=None) -> list[EvalRecord]``, ``load_benchmarks(names, ...)``
  (several, e.g. a validation subset), ``BENCHMARKS`` (the registry).
- ``PromptBuilder(tokenizer, system_prompt="prime")``: PRIME's prompts through the model's chat template.
- Backends: ``GenerationBackend`` (protocol), ``RolloutEngineBackend(engine)`` (wraps the trainer's live
  RolloutEngine), ``VLLMBackend(model_dir, ...)`` (builds one on an HF checkpoint), ``oracle_backend`` /
  ``wrong_oracle_backend`` (scripted, for tests and for checking a data directory).
- ``pass_at_k(n, c, k)``, ``benchmark_metrics(correct)``: the estimators.
"""

from __future__ import annotations

from .backends import GenerationBackend, ScriptedBackend, oracle_backend, wrong_oracle_backend
from .benchmarks import (
    BENCHMARKS,
    ENV_DATA_DIR,
    Benchmark,
    BenchmarkDataError,
    EvalRecord,
    load_benchmark,
    load_benchmarks,
    parse_benchmark_names,
    read_records,
    resolve_data_dir,
)
from .cli import main
from .metrics import avg_at_k, benchmark_metrics, default_ks, pass_at_k
from .model_dir import parse_model_arg, resolve_hf_dir
from .prompts import PromptBuilder
from .report import ModelResult, markdown_table, write_outputs
from .runner import BenchmarkResult, SamplingSettings, evaluate_records, run_validation
from .vllm_backend import RolloutEngineBackend, VLLMBackend  # vLLM itself is imported only when one is built

__all__ = [
    "BENCHMARKS",
    "ENV_DATA_DIR",
    "Benchmark",
    "BenchmarkDataError",
    "BenchmarkResult",
    "EvalRecord",
    "GenerationBackend",
    "ModelResult",
    "PromptBuilder",
    "RolloutEngineBackend",
    "SamplingSettings",
    "ScriptedBackend",
    "VLLMBackend",
    "avg_at_k",
    "benchmark_metrics",
    "default_ks",
    "evaluate_records",
    "load_benchmark",
    "load_benchmarks",
    "main",
    "markdown_table",
    "parse_benchmark_names",
    "parse_model_arg",
    "pass_at_k",
    "read_records",
    "resolve_data_dir",
    "resolve_hf_dir",
    "run_validation",
    "wrong_oracle_backend",
    "oracle_backend",
    "write_outputs",
]
