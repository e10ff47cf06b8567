"""The PRM stage on the fused head (prm.fused_head=true: both trunks, then one linear_prime_rewards call per
micro-batch) vs today's two-head stage (false: the reference and the PRM through their own
linear_token_logprobs heads, the log-ratio in torch), on the tiny trainer shape.

Run from the repository root (CPU: a 1-process gloo world; the same command on a GPU node):
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_prm_head --out bench/results/cpu_prm_head_tiny.json
(one thread: at this size a second one only adds noise on a shared host; 2-thread medians there varied 3x)

Shape: the default tiny checkpoint (make_tiny_checkpoint) and the default run's batch: data.prompts_per_step
x rollout.n rows (8 x 4), prompts of 16-48 tokens, responses of 1-rollout.max_tokens (24), fp32, the default
micro-batch budget and PRM mini-batch size. Per prm.update mode (after, none) the two stages run on their own
copies of the models (same weights), interleaved over --repeats rounds after one warm-up round each.
Reported per mode and head: min and median wall and process-CPU seconds of prm_stage (CPU seconds are what a
busy neighbour on a shared host inflates least), and the peak extra memory of one call
(bench/memory.py's peak extra RSS on CPU; torch.cuda.max_memory_allocated above the allocation before the
call on CUDA), plus the fused / two-head ratios of the medians and peaks. On CUDA every call ends with
torch.cuda.synchronize().
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.hardware import environment, write_json_atomic
from bench.memory import peak_extra_bytes

VOCAB = 250  # token ids drawn below the tiny tokenizer's specials (as tests/trainer/stage_helpers.py does)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _batch(config, vocab: int, seed: int = 0):
    from primeflow.trainer import parallel
    from primeflow.trainer.batch import build_train_batch

    rng = random.Random(seed)
    K = config.rollout.n
    rows = config.data.prompts_per_step * K
    prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(16, 48))] for _ in range(rows // K)]
    responses = [[rng.randrange(vocab) for _ in range(rng.randrange(1, config.rollout.max_tokens + 1))]
                 for _ in range(rows)]
    batch = build_train_batch([p for p in prompts for _ in range(K)], responses,
                              [[0.0] * len(r) for r in responses], ["length"] * rows,
                              [float(i % 2) for i in range(rows)], group_size=K, eos_ids=set(), pad_id=0)
    return batch.to(parallel.device())


def _peak(fn) -> int:
    if not torch.cuda.is_available():
        return peak_extra_bytes(fn)[1]
    _sync()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    _sync()
    return torch.cuda.max_memory_allocated() - before


def run(repeats: int) -> dict:
    from primeflow.models import make_tiny_checkpoint
    from primeflow.trainer import parallel
    from primeflow.trainer.config import Config
    from primeflow.trainer.models_setup import build_prime_models
    from primeflow.trainer.stages.prm import prm_stage
    from primeflow.trainer.stages.prm_head import fused_head_supported

    parallel.init_distributed(tp=1, pp=1)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "tiny", seed=0)
        for mode in ("after", "none"):
            setups = {}
            for head, fused in (("fused", True), ("two_head", False)):
                config = Config()
                config.prm.update, config.prm.fused_head = mode, fused
                models = build_prime_models(config, ckpt)
                assert fused_head_supported(models, config) is fused
                batch = _batch(config, VOCAB)
                old_logp = torch.zeros(batch.response_mask.shape, device=batch.device)
                setups[head] = (lambda m=models, b=batch, c=config, o=old_logp: prm_stage(m, b, c, old_logp=o))
            times: dict[str, list[float]] = {h: [] for h in setups}
            cpu: dict[str, list[float]] = {h: [] for h in setups}
            for round_ in range(repeats + 1):
                for head, call in setups.items():
                    _sync()
                    t0, c0 = time.perf_counter(), time.process_time()
                    call()
                    _sync()
                    if round_ > 0:  # round 0 warms up
                        times[head].append(time.perf_counter() - t0)
                        cpu[head].append(time.process_time() - c0)
            peaks = {head: _peak(call) for head, call in setups.items()}
            res = {h: {"min_s": min(t), "median_s": statistics.median(t), "min_cpu_s": min(cpu[h]),
                       "median_cpu_s": statistics.median(cpu[h]), "peak_extra_bytes": peaks[h]}
                   for h, t in times.items()}
            res["fused_over_two_head_median"] = res["fused"]["median_s"] / res["two_head"]["median_s"]
            res["fused_over_two_head_median_cpu"] = res["fused"]["median_cpu_s"] / res["two_head"]["median_cpu_s"]
            res["fused_over_two_head_peak"] = (res["fused"]["peak_extra_bytes"]
                                               / max(res["two_head"]["peak_extra_bytes"], 1))
            out[mode] = res
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {"environment": environment(), "repeats": args.repeats, "prm_stage": run(args.repeats)}
    print(result["prm_stage"])
    if args.out is not None:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
