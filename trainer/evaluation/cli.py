"""``primeflow eval``: benchmark one or several checkpoints and write the paper-shaped table.

Examples::

    # greedy pass@1 on the five math benchmarks (PRIME Table 1)
    primeflow eval --model runs/prime/checkpoints/step_240 --benchmarks math500,aime24,amc23,minerva,olympiadbench
    # avg@16 at temperature 0.3, top_p 0.95 (PRIME Table 12), SFT vs PRIME side by side
    primeflow eval --model sft=/models/Eurus-2-7B-SFT --compare runs/prime --samples 16 --temperature 0.3 \\
        --top-p 0.95 --out results/avg16
    # tensor parallel: one process per vLLM TP rank under torchrun (rank 0 writes the results)
    torchrun --nproc-per-node 4 -m primeflow eval --tp 4 --model runs/prime --samples 16 --temperature 0.3 \\
        --top-p 0.95
    # check a data directory: every reference must score 100% through the verifier
    primeflow eval --backend oracle --benchmarks math --data-dir my_data/

Before any engine starts, every prompt is tokenized with each model's tokenizer: ``--max-tokens`` defaults to
what fits the context (``min(4096, context - longest prompt)``, at least half the context), a too-large
``--max-tokens`` or ``--max-model-len`` is a one-line error, and prompts that still do not fit are skipped
(default), truncated or refused (``--long-prompts``), and counted (see fit.py).

Writes ``OUT/results.md`` (the table, also printed, then the settings that change scores: system prompt,
sampling, max_tokens, each model's context and long-prompt count), ``OUT/results.json`` (all metrics and those
settings) and ``OUT/<model>/<benchmark>.json`` (per problem: id, prompt, reference, completions, extracted
answers, scores). ``--out`` is proven writable before anything is loaded.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .backends import GenerationBackend, oracle_backend, wrong_oracle_backend
from .benchmarks import BENCHMARKS, ENV_DATA_DIR, BenchmarkDataError, EvalRecord, load_benchmark, parse_benchmark_names
from .fit import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_RULE,
    LONG_PROMPT_POLICIES,
    ModelFit,
    apply_long_prompt_policy,
    context_length,
    measure,
    resolve_max_tokens,
)
from .model_dir import ModelSpec, parse_model_arg
from .prompts import SYSTEM_PROMPTS, PromptBuilder
from .report import ModelResult, RunInfo, check_writable, results_markdown, write_outputs
from .runner import SamplingSettings, evaluate_records

DEFAULT_BENCHMARKS = "math500,aime24,amc23,minerva,olympiadbench"
BACKENDS = ("vllm", "oracle", "wrong-oracle")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="primeflow eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        nargs="+",
        action="extend",
        default=[],
        metavar="[LABEL=]PATH",
        help="HF dir, run checkpoint dir (with policy_hf/) or run dir (latest checkpoint); repeatable",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        action="extend",
        default=[],
        metavar="[LABEL=]PATH",
        help="more models, one table row each (same as extra --model values)",
    )
    p.add_argument(
        "--benchmarks",
        default=DEFAULT_BENCHMARKS,
        help=f"comma-separated, from: {', '.join(BENCHMARKS)}; 'math' = the five math benchmarks",
    )
    p.add_argument("--samples", type=int, default=1, help="completions per problem (default 1: greedy pass@1)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"response length limit (default: min({DEFAULT_MAX_TOKENS}, context length - longest prompt), at "
        "least half the context; the smallest over the models compared)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"folder with eval/*.jsonl and code/*.jsonl (default: ${ENV_DATA_DIR}, else the "
        "checkout's data/ or ../shared/data)",
    )
    p.add_argument("--out", default="primeflow-eval", help="output directory (default ./primeflow-eval)")
    p.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel degree of the vLLM engine (> 1: launch with torchrun, one process per rank)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="vLLM dtype (default: the checkpoint's)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="vLLM context length, prompt + response (default and maximum: the checkpoint's "
        "max_position_embeddings)",
    )
    p.add_argument(
        "--long-prompts",
        default="skip",
        choices=LONG_PROMPT_POLICIES,
        help="prompts longer than context - max_tokens: skip (default: not generated, not scored, counted in "
        "the results), truncate (drop their beginning, counted) or error (stop before generating)",
    )
    p.add_argument(
        "--system-prompt",
        default="prime",
        choices=sorted(SYSTEM_PROMPTS),
        help="'prime' (PRIME's action-centric system prompt, default) or 'none'",
    )
    p.add_argument(
        "--backend",
        default="vllm",
        choices=BACKENDS,
        help="vllm (default); oracle / wrong-oracle answer with the reference / a wrong answer "
        "(checks data and scoring, needs no model)",
    )
    p.add_argument("--math-timeout", type=float, default=5.0, help="verifier time limit per sample, seconds")
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(8, (os.cpu_count() or 2) // 2)),
        help="verifier worker processes (default: half the cores, at most 8)",
    )
    return p


def _make_backend(kind: str, spec: ModelSpec | None, records, builder, args, context: int | None) -> GenerationBackend:
    if kind == "oracle":
        return oracle_backend(records, builder)
    if kind == "wrong-oracle":
        return wrong_oracle_backend(records, builder)
    from .vllm_backend import VLLMBackend

    assert spec is not None
    return VLLMBackend(
        spec.path,
        tp_size=args.tp,
        dtype=args.dtype,
        max_model_len=context,
        seed=args.seed,
        truncate_prompts=args.long_prompts == "truncate",
    )


def _init_world(tp: int) -> int:
    """Under torchrun (or with --tp > 1), join the world so that RolloutEngine can shard vLLM; returns the
    rank (0 without torchrun). Every rank evaluates everything; only rank 0 writes."""
    if tp < 1:
        raise ValueError(f"--tp must be >= 1, got {tp}")
    if tp == 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0
    if "RANK" not in os.environ:
        raise ValueError(f"--tp {tp} needs one process per rank: torchrun --nproc-per-node {tp} -m primeflow eval ...")
    from ..parallel import init_distributed

    return init_distributed().rank


def _prepare(
    spec: ModelSpec | None, args: argparse.Namespace, data: dict[str, list[EvalRecord]]
) -> tuple[PromptBuilder, ModelFit | None]:
    """The prompt builder of one model and, for a real model, its context and prompt lengths."""
    if spec is None:
        return PromptBuilder(None, args.system_prompt), None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(spec.path))
    builder = PromptBuilder(tokenizer, args.system_prompt)
    prompts = {b: [builder(r) for r in recs] for b, recs in data.items()}
    return builder, measure(spec.label, context_length(spec.path, args.max_model_len), tokenizer, prompts)


def _warn_long(fit: ModelFit, data: dict[str, list[EvalRecord]], policy: str, max_tokens: int) -> None:
    for name, ids in fit.long_ids.items():
        if ids:
            done = "skipped (not scored)" if policy == "skip" else "truncated at the start"
            print(
                f"[eval] warning: {fit.label} {name}: {len(ids)} of {len(data[name])} prompts are longer than "
                f"context {fit.context} - max_tokens {max_tokens}, {done} (--long-prompts)",
                file=sys.stderr,
            )


def run(args: argparse.Namespace) -> int:
    benchmarks = parse_benchmark_names(args.benchmarks)
    check_writable(args.out)  # before any data is loaded or any engine starts
    # validated now (a bad --samples/--temperature fails before any tokenizer loads); max_tokens is fitted below
    max_tokens = DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens
    settings = SamplingSettings(args.samples, args.temperature, args.top_p, max_tokens, args.seed)
    data = {b: load_benchmark(b, args.data_dir, limit=args.limit) for b in benchmarks}
    model_args = list(args.model) + list(args.compare)
    if args.backend == "vllm":
        if not model_args:
            raise ValueError("--model is required with --backend vllm")
        specs: list[ModelSpec | None] = [parse_model_arg(m) for m in model_args]  # fail fast, before loading
    else:
        if model_args:
            raise ValueError(f"--backend {args.backend} answers from the references; it takes no --model")
        specs = [None]
    # Every model's context and prompt lengths first: a budget that does not fit fails here, not after
    # an engine has started (vLLM checks only once it is up, and then fails the whole benchmark).
    prepared = [_prepare(spec, args, data) for spec in specs]
    fits = [fit for _, fit in prepared if fit is not None]
    settings = replace(settings, max_tokens=resolve_max_tokens(args.max_tokens, fits))
    selected = [
        apply_long_prompt_policy(fit, data, settings.max_tokens, args.long_prompts) if fit else data
        for _, fit in prepared
    ]
    rule = "--max-tokens" if args.max_tokens is not None else DEFAULT_RULE if fits else "default; no model context"
    info = RunInfo(args.system_prompt, args.long_prompts, rule)
    rank = _init_world(args.tp) if args.backend == "vllm" else 0
    models: list[ModelResult] = []
    for spec, (builder, fit), records in zip(specs, prepared, selected, strict=True):
        if rank == 0 and fit is not None:
            if not builder.uses_chat_template:
                print(f"[eval] warning: {spec.path} has no chat template; prompts use ChatML markers", file=sys.stderr)
            _warn_long(fit, data, args.long_prompts, settings.max_tokens)
        models.append(_evaluate_model(spec, builder, fit, records, benchmarks, settings, args, rank))
    if rank != 0:
        return 0
    paths = write_outputs(args.out, models, benchmarks, settings, extra={"backend": args.backend}, info=info)
    print(results_markdown(models, benchmarks, settings, info))
    print(f"[eval] wrote {paths['table']} and {paths['summary']}", file=sys.stderr)
    return 0


def _evaluate_model(
    spec: ModelSpec | None,
    builder: PromptBuilder,
    fit: ModelFit | None,
    data: dict[str, list[EvalRecord]],
    benchmarks: list[str],
    settings: SamplingSettings,
    args: argparse.Namespace,
    rank: int,
) -> ModelResult:
    """One table row: build the model's backend, run every benchmark, release the engine."""
    all_records = [r for recs in data.values() for r in recs]
    backend: Any = _make_backend(args.backend, spec, all_records, builder, args, fit.context if fit else None)
    label = spec.label if spec is not None else args.backend
    row = ModelResult(
        label,
        str(spec.path) if spec else None,
        spec.step if spec else None,
        context_length=fit.context if fit else None,
        long_prompts=dict(fit.long_ids) if fit else {},
    )
    for name in benchmarks:
        res = evaluate_records(
            backend, name, data[name], builder, settings, math_timeout_s=args.math_timeout, workers=args.workers
        )
        row.results.append(res)
        if rank == 0:
            print(
                f"[eval] {label} {name}: {settings.metric} = {100 * res.metrics[settings.metric]:.1f}% "
                f"({int(res.metrics['n_problems'])} problems, generate {res.seconds['generate']:.1f}s, "
                f"score {res.seconds['score']:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    if hasattr(backend, "close"):
        backend.close()
    del backend
    gc.collect()  # release one engine before the next model's is built
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``primeflow eval``; returns the exit code (2 on bad arguments or data)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (BenchmarkDataError, FileNotFoundError, ValueError) as e:
        print(f"primeflow eval: error: {e}", file=sys.stderr)
        return 2
