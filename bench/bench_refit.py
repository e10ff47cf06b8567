"""Refit (Megatron policy -> colocated vLLM weight sync) time and GB/s vs model size and bucket size, and
vLLM generation tokens/s, with primeflow.trainer.rollout.RolloutEngine.

Run from the repository root.
CPU (the dev machine; a few minutes, most of it the 0.5B model):
    .venv/bin/python -m bench.bench_refit --out bench/results/cpu_refit.json
GPU (one node; trainer TP=2 -> one vLLM TP=1 replica per GPU, bf16; add 7B for a realistic size):
    torchrun --nproc_per_node=8 -m bench.bench_refit --trainer-tp 2 --vllm-tp 1 --dtype bfloat16 \\
        --sizes tiny 0.5B 7B --sweep-size 7B --out bench/results/gpu_refit.json

Models (random weights; Qwen2 architecture): tiny = make_tiny_checkpoint's shape (hidden 256, 2 layers,
V 259); 60M (hidden 512, 8 layers, V 32000); 0.5B = Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads /
2 KV, ffn 4864, V 151936, tied embeddings); 7B = Qwen2.5-7B's shape (GPU). The vLLM engine starts with
`load_format="dummy"` (random weights, no tokenizer: a 152k-token byte tokenizer takes minutes to build)
from a directory holding only config.json; the Megatron policy is build_model's random init. Both are fp32
on CPU unless --dtype says otherwise.

Measured per size: `sync_weights` with the default 256 MiB buckets (one warm-up call, then --repeats calls;
min and median seconds, GB/s = bytes fed to vLLM / seconds), and, as the in-run baseline, a plain copy of
the same tensors (`copy_` into preallocated buffers = memory bandwidth; `clone` = with fresh allocations,
whose page faults dominate on CPU), and
the trainer side alone (`stream_only`: plan, TP gather, HF conversion, PP broadcast, consumed without vLLM;
the rest of a refit is vLLM's in-place reload).
Bucket sweep on --sweep-size: 1..1024 MiB, interleaved over --repeats rounds (min per size).
Generation on --gen-size: 16 prompts x 4 samples, 32-token
random prompts, 64 new tokens (no EOS: every row runs to max_tokens), tokens/s = new tokens / wall.
Writes {"kind": "refit", ...} JSON atomically (bench/hardware.write_json_atomic) from rank 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=259, hidden_size=256, ffn_hidden_size=576, num_layers=2, num_attention_heads=4,
                 num_query_groups=2, tie_word_embeddings=False),
    "60M": dict(vocab_size=32000, hidden_size=512, ffn_hidden_size=1536, num_layers=8, num_attention_heads=8,
                num_query_groups=2, tie_word_embeddings=False),
    "0.5B": dict(vocab_size=151936, hidden_size=896, ffn_hidden_size=4864, num_layers=24, num_attention_heads=14,
                 num_query_groups=2, tie_word_embeddings=True),
    "7B": dict(vocab_size=152064, hidden_size=3584, ffn_hidden_size=18944, num_layers=28, num_attention_heads=28,
               num_query_groups=4, tie_word_embeddings=False),
}
BUCKETS_MB = (1, 4, 16, 64, 256, 1024)


def model_config(size: str, dtype: str):
    from primeflow.models import ModelConfig

    return ModelConfig(architecture="qwen2", head_dim=64 if size != "7B" else 128, max_position_embeddings=4096,
                       rms_norm_eps=1e-6, rope_theta=1e6, rope_scaling_factor=None, qkv_bias=True,
                       params_dtype=dtype, **SIZES[size])


def write_config_dir(cfg, path: Path) -> Path:
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    return path


def copy_baseline(model, repeats: int) -> dict[str, float]:
    """Two floors for moving the model's bytes once on this machine: `copy_` into buffers allocated
    beforehand (memory bandwidth: what an in-place reload into existing vLLM storage could reach) and
    `clone` (fresh allocations each time: page faults included, as for any temporary a refit creates)."""
    import torch

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
            del out
        return best

    params = [p.detach() for p in model.parameters()]
    dst = [torch.empty_like(p) for p in params]
    for d in dst:
        d.fill_(0)  # touch the pages now
    copy_s = timed(lambda: [d.copy_(p) for d, p in zip(dst, params, strict=True)])
    dst.clear()
    clone_s = timed(lambda: [p.clone() for p in params])
    nbytes = sum(p.numel() * p.element_size() for p in params)
    return {"bytes": nbytes, "copy_seconds": copy_s, "gb_per_s": nbytes / copy_s / 1e9, "clone_seconds": clone_s,
            "clone_gb_per_s": nbytes / clone_s / 1e9}


def time_stream_only(model, bucket_mb: float, repeats: int) -> dict[str, Any]:
    """The trainer side alone: plan + TP gather + HF conversion (+ PP broadcast) of every bucket, consumed
    without vLLM. refit seconds minus this is vLLM's in-place reload (layerwise load + CPU repacking)."""
    from primeflow.trainer.rollout.weight_sync import global_plan, stream_hf_tensors

    times = []
    for _ in range(repeats):
        counters = {"bytes": 0, "tensors": 0, "buckets": 0}
        t0 = time.perf_counter()
        for _name, _tensor in stream_hf_tensors(model, global_plan(model, int(bucket_mb * 2**20)), counters):
            pass
        times.append(time.perf_counter() - t0)
    return {"bucket_mb": bucket_mb, "seconds_min": min(times), "gb_per_s": counters["bytes"] / min(times) / 1e9}


def time_refits(engine, model, bucket_mb: float, repeats: int) -> dict[str, Any]:
    stats = [engine.sync_weights(model, bucket_mb=bucket_mb) for _ in range(repeats)]
    secs = [s.seconds for s in stats]
    return {"bucket_mb": bucket_mb, "bytes": stats[0].bytes, "buckets": stats[0].buckets,
            "tensors": stats[0].tensors, "seconds": secs, "seconds_min": min(secs),
            "seconds_median": statistics.median(secs), "gb_per_s": stats[0].bytes / min(secs) / 1e9}


def bucket_sweep(engine, model, rounds: int) -> list[dict[str, Any]]:
    """Refit time per bucket size, the sizes interleaved round by round so that a neighbour's load drifting
    during the sweep does not favour the sizes measured first; min over rounds."""
    runs: dict[float, list] = {mb: [] for mb in BUCKETS_MB}
    for _ in range(rounds):
        for mb in BUCKETS_MB:
            runs[mb].append(engine.sync_weights(model, bucket_mb=mb))
    out = []
    for mb, stats in runs.items():
        secs = [s.seconds for s in stats]
        out.append({"bucket_mb": mb, "bytes": stats[0].bytes, "buckets": stats[0].buckets, "seconds": secs,
                    "seconds_min": min(secs), "seconds_median": statistics.median(secs),
                    "gb_per_s": stats[0].bytes / min(secs) / 1e9})
    return out


def time_generation(engine, repeats: int = 2) -> dict[str, Any]:
    import torch
    from primeflow.trainer.rollout import SamplingConfig

    g = torch.Generator().manual_seed(0)
    vocab = engine.vocab_size
    prompts = torch.randint(0, vocab, (16, 32), generator=g).tolist()
    sampling = SamplingConfig(temperature=1.0, max_tokens=64, seed=0)
    engine.generate(prompts[:2], 1, SamplingConfig(max_tokens=4, seed=0))  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        batch = engine.generate(prompts, 4, sampling)
        runs.append((time.perf_counter() - t0, batch.num_response_tokens))
    best = min(runs)
    return {"prompts": 16, "n": 4, "prompt_tokens": 32, "max_tokens": 64, "new_tokens": best[1],
            "seconds": [r[0] for r in runs], "tokens_per_s": best[1] / best[0]}


def bench_size(size: str, args, root: Path, rank: int) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from primeflow.models import build_model
    from primeflow.trainer.rollout import RolloutEngine

    cfg = model_config(size, args.dtype)
    ckpt = root / size
    if rank == 0:
        write_config_dir(cfg, ckpt)
    dist.barrier()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(cfg, role="policy")
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    engine = RolloutEngine(ckpt, tp_size=args.vllm_tp, dtype=args.dtype, max_model_len=512, seed=0,
                           kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
                           vllm_kwargs={"load_format": "dummy", "skip_tokenizer_init": True})
    engine_s = time.perf_counter() - t0
    warm = engine.sync_weights(model)  # first call: plan + one-time vLLM reload set-up
    out: dict[str, Any] = {"size": size, "config": {k: v for k, v in vars(cfg).items()},
                           "local_params": n_params, "build_model_s": build_s, "engine_init_s": engine_s,
                           "first_refit_s": warm.seconds, "copy_baseline": copy_baseline(model, args.repeats),
                           "refit": time_refits(engine, model, 256, args.repeats),
                           "stream_only": time_stream_only(model, 256, args.repeats)}
    out["refit"]["vs_copy_baseline"] = out["refit"]["gb_per_s"] / out["copy_baseline"]["gb_per_s"]
    out["refit"]["vs_clone_baseline"] = out["refit"]["gb_per_s"] / out["copy_baseline"]["clone_gb_per_s"]
    if size == args.sweep_size:
        out["bucket_sweep"] = bucket_sweep(engine, model, args.repeats)
    if size == args.gen_size:
        out["generation"] = time_generation(engine)
    r = out["refit"]
    print(f"[rank {rank}] {size:5s} {r['bytes'] / 1e9:7.3f} GB  refit {r['seconds_min']:7.3f} s "
          f"{r['gb_per_s']:6.2f} GB/s ({r['vs_copy_baseline']:.2f}x of copy_ at "
          f"{out['copy_baseline']['gb_per_s']:.2f} GB/s, clone "
          f"{out['copy_baseline']['clone_gb_per_s']:.2f} GB/s), {r['buckets']} buckets; trainer side alone "
          f"{out['stream_only']['seconds_min']:.3f} s", flush=True)
    engine.close()  # keeps the torch.distributed world (vLLM's own shutdown would destroy it)
    del engine, model
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Megatron -> vLLM refit and generation throughput")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu_refit.json"))
    parser.add_argument("--sizes", nargs="+", default=["tiny", "60M", "0.5B"], choices=list(SIZES))
    parser.add_argument("--sweep-size", default="0.5B", choices=list(SIZES))
    parser.add_argument("--gen-size", default="tiny", choices=list(SIZES))
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--trainer-tp", type=int, default=1)
    parser.add_argument("--trainer-pp", type=int, default=1)
    parser.add_argument("--vllm-tp", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    import torch.distributed as dist
    from primeflow.trainer.parallel import init_distributed

    from .hardware import environment, load, write_json_atomic

    args.dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    layout = init_distributed(tp=args.trainer_tp, pp=args.trainer_pp)
    command = shlex.join(["python", "-m", "bench.bench_refit", *(sys.argv[1:] if argv is None else argv)])
    env_before = environment() if layout.rank == 0 else None
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="primeflow-refit-") as tmp:
        root = Path(tmp)
        if dist.get_world_size() > 1:  # one shared directory: rank 0's name
            holder = [str(root)]
            dist.broadcast_object_list(holder, src=0)
            root = Path(holder[0])
        for size in args.sizes:
            results.append(bench_size(size, args, root, layout.rank))
        dist.barrier()
    if layout.rank == 0:
        write_json_atomic(args.out, {
            "kind": "refit", "schema": 1, "command": command, "environment": env_before, "load_after": load(),
            "layout": {"world": layout.world_size, "trainer_tp": layout.tp, "trainer_pp": layout.pp,
                       "trainer_dp": layout.dp, "vllm_tp": args.vllm_tp},
            "dtype": args.dtype, "wall_s": time.monotonic() - started, "results": results})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
