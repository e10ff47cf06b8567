"""Model start-up cost: build one Megatron model for this rank and fill it from an HF checkpoint, exactly as
the trainer does for each of the policy, the PRM and the reference (`trainer.models_setup.load_model`).

Run from the repository root (one process = TP=1; under torchrun every rank reports its own numbers):
    .venv/bin/python -m bench.bench_startup --size 0.5B --out bench/results/cpu_startup_0.5B_tp1.json
    torchrun --nproc-per-node 2 -m bench.bench_startup --size 0.5B --tp 2 \\
        --out bench/results/cpu_startup_0.5B_tp2.json

Reported per rank: seconds for `load_model` (build + load), the bytes this rank's parameters hold, and the
process's peak resident memory (ru_maxrss) before and after (the checkpoint file is memory-mapped: pages
it reads count as resident). Same script on two commits gives the before/after comparison.
The checkpoint (bf16, --size's shape from bench.bench_refit.SIZES) is written once into --ckpt-dir
(default: a temporary directory) and reused when it already exists there.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench.bench_refit import SIZES
from bench.hardware import environment, write_json_atomic


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _checkpoint(size: str, root: Path) -> Path:
    from primeflow.models import make_tiny_checkpoint

    path = root / f"{size}-bf16"
    if (path / "model.safetensors").is_file():
        return path
    overrides = dict(SIZES[size])
    overrides["intermediate_size"] = overrides.pop("ffn_hidden_size")
    overrides["num_hidden_layers"] = overrides.pop("num_layers")
    overrides["num_key_value_heads"] = overrides.pop("num_query_groups")
    return make_tiny_checkpoint(path, seed=0, dtype="bfloat16", **overrides)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="0.5B", choices=sorted(SIZES))
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--ckpt-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from primeflow.models import ModelConfig
    from primeflow.trainer import parallel
    from primeflow.trainer.models_setup import load_model

    layout = parallel.init_distributed(tp=args.tp, pp=1)
    root = args.ckpt_dir or Path(tempfile.gettempdir()) / "primeflow-bench-startup"
    root.mkdir(parents=True, exist_ok=True)
    if layout.is_rank0:
        _checkpoint(args.size, root)
    dist.barrier()
    ckpt = _checkpoint(args.size, root)
    cfg = ModelConfig.from_hf(ckpt)

    rss_before = _peak_rss_bytes()
    start = time.perf_counter()
    model = load_model(ckpt, role="policy", dtype="bfloat16")
    loaded = time.perf_counter()
    result = {
        "rank": dist.get_rank(), "tp": args.tp, "size": args.size, "hidden": cfg.hidden_size,
        "total_s": loaded - start,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "peak_rss_before_bytes": rss_before, "peak_rss_after_bytes": _peak_rss_bytes(),
        "checkpoint_bytes": (ckpt / "model.safetensors").stat().st_size,
        "omp_threads": torch.get_num_threads(),
    }
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, result)
    if layout.is_rank0:
        write_json_atomic(args.out, {"environment": environment(), "ranks": ranks})
        print(json.dumps(ranks, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
