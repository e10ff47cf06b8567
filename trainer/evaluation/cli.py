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

Writes ``OUT/results.md`` (the table, also printed), ``OUT/results.json`` (all metrics) and
``OUT/<model>/<benchmark>.json`` (per problem: id, prompt, reference, completions, extracted answers, scores).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

from .backends import GenerationBackend, oracle_backend, wrong_oracle_backend
from .benchmarks import BENCHMARKS, ENV_DATA_DIR, BenchmarkDataError, load_benchmark, parse_benchmark_names
from .model_dir import ModelSpec, parse_model_arg
from .prompts import SYSTEM_PROMPTS, PromptBuilder
from .report import ModelResult, check_writable, markdown_table, write_outputs
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
    p.add_argument("--max-tokens", type=int, default=4096, help="response length limit (default 4096)")
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
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default: checkpoint's)")
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


def _make_backend(kind: str, spec: ModelSpec | None, records, builder, args) -> GenerationBackend:
    if kind == "oracle":
        return oracle_backend(records, builder)
    if kind == "wrong-oracle":
        return wrong_oracle_backend(records, builder)
    from .vllm_backend import VLLMBackend

    assert spec is not None
    return VLLMBackend(spec.path, tp_size=args.tp, dtype=args.dtype, max_model_len=args.max_model_len, seed=args.seed)


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


def run(args: argparse.Namespace) -> int:
    benchmarks = parse_benchmark_names(args.benchmarks)
    check_writable(args.out)  # before any data is loaded or any engine starts
    settings = SamplingSettings(args.samples, args.temperature, args.top_p, args.max_tokens, args.seed)
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
    rank = _init_world(args.tp) if args.backend == "vllm" else 0
    models: list[ModelResult] = []
    for spec in specs:
        tokenizer = None
        if spec is not None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(spec.path))
        builder = PromptBuilder(tokenizer, args.system_prompt)
        if tokenizer is not None and not builder.uses_chat_template and rank == 0:
            print(f"[eval] warning: {spec.path} has no chat template; prompts use ChatML markers", file=sys.stderr)
        all_records = [r for recs in data.values() for r in recs]
        backend = _make_backend(args.backend, spec, all_records, builder, args)
        label = spec.label if spec is not None else args.backend
        row = ModelResult(label, str(spec.path) if spec else None, spec.step if spec else None)
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
        models.append(row)
        if hasattr(backend, "close"):
            backend.close()
        del backend
        gc.collect()  # release one engine before the next model's is built
    if rank != 0:
        return 0
    paths = write_outputs(args.out, models, benchmarks, settings, extra={"backend": args.backend})
    print(markdown_table(models, benchmarks, settings))
    print(f"[eval] wrote {paths['table']} and {paths['summary']}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``primeflow eval``; returns the exit code (2 on bad arguments or data)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (BenchmarkDataError, FileNotFoundError, ValueError) as e:
        print(f"primeflow eval: error: {e}", file=sys.stderr)
        return 2
