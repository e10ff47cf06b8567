"""Time and peak extra memory of `linear_token_logprobs` and `prime_token_rewards` vs N and V on CPU,
primeflow vs the eager reference (`primeflow.kernels.reference`, which materialises fp32 [N, V] logits).

Run from the repository root (about 5-8 minutes on the 2-core dev machine):
    .venv/bin/python -m bench.bench_scaling --out bench/results/cpu_scaling.json
Then `python -m bench.report` renders the tables, the least-squares memory slopes and the plots.

Sweeps (fp32, H=896 = Qwen2.5-0.5B's hidden size, torch's default threads), see CASES:
  N sweep: V=32768, N in 256..8192 (..4096 for forward+backward and the three-model prime_token_rewards)
  V sweep: V in 8192..151936 at N=1024 (N=512 for forward+backward)
Cases: linear_token_logprobs forward (no grad) and forward+backward (grads w.r.t. hidden and weight,
upstream gradient 1 per token); prime_token_rewards with three models (policy, PRM, reference), each given
as its own (hidden [N, H], weight [V, H]), scoring only.
Memory is bench/memory.py's peak extra resident set of one call. glibc's mmap threshold is pinned to 64 KiB
at start-up (mallopt), so every buffer of 64 KiB or more is mapped on allocation and unmapped on free: a freed
[N, V] block of one point cannot be silently reused by the next and hide its peak. For forward+backward
the returned gradients (N*H + V*H fp32, the floor for every provider) are reported separately.
Timing: min over the calls of a point (the first call is the memory measurement; points shorter than
2 s get a second call), wall and process CPU seconds. The machine is shared: the JSON records `uptime`
before and after and the 1-minute load at every point. The sweep stops starting new points (the rest are
recorded as skipped) once the --budget-s wall-clock budget is spent.
"""

from __future__ import annotations

import argparse
import ctypes
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import primeflow.kernels as K
import torch
from primeflow.kernels import reference

from .hardware import environment, load, measure_cpu_limits, write_json_atomic
from .memory import peak_extra_bytes

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def pin_mmap_threshold(nbytes: int = 64 * 1024) -> bool:
    """Make glibc serve (and return) every allocation >= nbytes via mmap; False when not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


# (op, pass) -> (N sweep at V=32768, V sweep at fixed N): the largest shapes where they cost the most time
N_SWEEP = (256, 512, 1024, 2048, 4096, 8192)
V_SWEEP = (8192, 16384, 32768, 65536, 131072, 151936)
V_FOR_N_SWEEP = 32768
CASES = {
    ("linear_token_logprobs", "forward"): (N_SWEEP, 1024),
    ("linear_token_logprobs", "forward+backward"): (N_SWEEP[:-1], 512),
    ("prime_token_rewards", "forward"): (N_SWEEP[:-1], 1024),
}
PROVIDERS = ("eager", "primeflow")
PRIME_MODELS = 3
BETA = 0.05


def flops(op: str, kind: str, n: int, h: int, v: int) -> int:
    """Useful GEMM flops: 2NHV per model forward; forward+backward counts the forward GEMM plus dhidden and
    dweight (6NHV); primeflow's recompute-in-backward executes 8NHV, eager (logits kept) 6NHV."""
    per_model = 2 * n * h * v
    if op == "prime_token_rewards":
        return PRIME_MODELS * per_model
    return 3 * per_model if kind == "forward+backward" else per_model


def make_inputs(op: str, n: int, h: int, v: int, generator: torch.Generator) -> dict[str, Any]:
    labels = torch.randint(0, v, (n,), generator=generator)
    models = 1 if op == "linear_token_logprobs" else PRIME_MODELS
    pairs = [(torch.randn(n, h, generator=generator), torch.randn(v, h, generator=generator) * (2 / h**0.5))
             for _ in range(models)]
    return {"labels": labels, "pairs": pairs}


def make_call(op: str, kind: str, provider: str, inputs: dict[str, Any]) -> Callable[[], Any]:
    labels, pairs = inputs["labels"], inputs["pairs"]
    if op == "prime_token_rewards":
        fn = K.prime_token_rewards if provider == "primeflow" else reference.prime_token_rewards
        policy, prm, ref = pairs
        return lambda: fn(labels, prm=prm, ref=ref, policy=policy, beta=BETA)
    fn = K.linear_token_logprobs if provider == "primeflow" else reference.linear_token_logprobs
    hidden, weight = pairs[0]
    if kind == "forward":
        def forward():
            with torch.no_grad():
                return fn(hidden, weight, labels)
        return forward

    def forward_backward():
        h = hidden.detach().requires_grad_()
        w = weight.detach().requires_grad_()
        fn(h, w, labels).sum().backward()
        return h.grad, w.grad
    return forward_backward


def measure(call: Callable[[], Any], min_repeat_s: float = 2.0) -> tuple[list[float], list[float], int]:
    """(wall seconds of each call, process CPU seconds of each call, peak extra bytes of the first call).
    CPU seconds are what a busy neighbour inflates least (it steals wall time, not this process's work)."""
    wall, cpu = [], []
    w0, c0 = time.perf_counter(), time.process_time()
    _, peak = peak_extra_bytes(call)
    wall.append(time.perf_counter() - w0)
    cpu.append(time.process_time() - c0)
    if wall[0] < min_repeat_s:
        w0, c0 = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, peak


def plan(h: int) -> list[dict[str, Any]]:
    """Every (op, pass, sweep, N, V) point, cheapest first (by flops) across all cases, so that a budget cut
    drops the most expensive points of every case rather than a whole case."""
    points = []
    for (op, kind), (n_sweep, n_for_v) in CASES.items():
        points += [dict(op=op, kind=kind, sweep="N", N=n, V=V_FOR_N_SWEEP, H=h) for n in n_sweep]
        points += [dict(op=op, kind=kind, sweep="V", N=n_for_v, V=v, H=h) for v in V_SWEEP]
    return sorted(points, key=lambda p: flops(p["op"], p["kind"], p["N"], p["H"], p["V"]))


def run(points: list[dict[str, Any]], budget_s: float, log=print) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    # warm-up: first-call costs (thread pool, dispatch, extension load) stay out of the first point
    for op, kind in CASES:
        small = make_inputs(op, 64, 64, 512, generator)
        for provider in PROVIDERS:
            make_call(op, kind, provider, small)()
    started = time.monotonic()
    results = []
    for point in points:
        if time.monotonic() - started > budget_s:
            results += [dict(point, provider=p, skipped="wall-clock budget spent") for p in PROVIDERS]
            continue
        op, kind, n, h, v = point["op"], point["kind"], point["N"], point["H"], point["V"]
        inputs = make_inputs(op, n, h, v, generator)
        for provider in PROVIDERS:
            seconds, cpu_seconds, peak = measure(make_call(op, kind, provider, inputs))
            grads = (n * h + v * h) * 4 if kind == "forward+backward" else 0
            row = dict(point, provider=provider, seconds=min(seconds), all_seconds=seconds,
                       cpu_seconds=min(cpu_seconds),
                       peak_extra_bytes=peak, gradient_bytes=grads, peak_extra_beyond_gradients=peak - grads,
                       logits_bytes=n * v * 4, flops=flops(op, kind, n, h, v), load1=load()["loadavg"][0],
                       path=(K.linear_token_logprobs_backend(inputs["labels"]).value
                             if provider == "primeflow" else "reference"))
            results.append(row)
            log(f"{op:22s} {kind:16s} N={n:5d} V={v:6d} {provider:9s} {min(seconds):8.3f} s "
                f"peak +{peak / 2**20:9.1f} MiB (beyond grads {(peak - grads) / 2**20:9.1f})")
        del inputs
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="linear_token_logprobs / prime_token_rewards vs N and V (CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu_scaling.json"))
    parser.add_argument("--hidden", type=int, default=896, help="H (default: Qwen2.5-0.5B's 896)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting new points after this")
    parser.add_argument("--quick", action="store_true", help="two points per sweep (a smoke run)")
    args = parser.parse_args(argv)
    # pinned here, not at import: `pytest bench/` imports this module and must not change the allocator
    # behaviour of the other suites; nothing large has been allocated yet at this point.
    mmap_pinned = pin_mmap_threshold()
    if torch.cuda.is_available():
        print("note: this sweep measures the CPU paths (host RSS); GPU numbers come from the pytest suites")
    command = shlex.join(["python", "-m", "bench.bench_scaling", *(sys.argv[1:] if argv is None else argv)])
    env_before = environment()
    print(f"load before: {env_before['uptime']}")
    hardware = measure_cpu_limits()
    print(f"measured limits: copy {hardware['mem_GBps']:.1f} GB/s, fp32 GEMM {hardware['fp32_GFLOPs']:.1f} GFLOP/s")
    points = plan(args.hidden)
    if args.quick:
        points = [p for p in points if (p["sweep"] == "N" and p["N"] in N_SWEEP[:2])
                  or (p["sweep"] == "V" and p["V"] in V_SWEEP[:2])]
    started = time.monotonic()
    results = run(points, args.budget_s)
    wall_s = time.monotonic() - started
    after = load()
    print(f"load after: {after['uptime']}")
    # measured again at the end: neighbours come and go, the better of the two is the machine's limit
    hardware_after = measure_cpu_limits()
    limits = dict(hardware, **{key: max(hardware[key], hardware_after[key]) for key in ("mem_GBps", "fp32_GFLOPs")},
                  method=hardware["method"] + "; best of the measurements before and after the sweep")
    write_json_atomic(args.out, {
        "kind": "scaling", "schema": 1, "command": command, "environment": env_before,
        "load_after": after, "hardware": limits, "hardware_before": hardware, "hardware_after": hardware_after,
        "mmap_threshold_pinned": mmap_pinned, "dtype": "float32", "wall_s": wall_s,
        "prime_models": PRIME_MODELS, "points": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
