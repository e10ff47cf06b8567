"""The PRM stage on the fused head (prm.fused_head=true: both trunks, then one linear_prime_rewards call per
micro-batch) vs today's two-head stage (false: the reference and the PRM through their own
linear_token_logprobs heads, the log-ratio in torch), on the tiny trainer shape.

Run from the repository root (CPU: a 1-process gloo world; the same command on a GPU node):
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_prm_head --out bench/results/cpu_prm_head_tiny.json
(one thread: at this size a second one only adds noise on a shared host; 2-thread medians there varied 3x)

Shape: the default tiny checkpoint (make_tiny_checkpoint) and the batch of configs/tiny_cpu_addition.yaml (the
embedded default when the results were recorded; its frozen reference is what the fused head needs):
data.prompts_per_step x rollout.n rows (8 x 4), prompts of 16-48 tokens, responses of 1-rollout.max_tokens (24),
fp32, its micro-batch budget and PRM mini-batch size. Per prm.update mode (after, none) the two stages run on their own
copies of the models (same weights), interleaved over --repeats rounds after one warm-up round each.
Reported per mode and head: min and median wall and process-CPU seconds of prm_stage (CPU seconds are what a
busy neighbour on a shared host inflates least), and the peak extra memory of one call
(bench/memory.py's peak extra RSS on CPU; torch.cuda.max_memory_allocated above the allocation before the
call on CUDA), plus the fused / two-head ratios of the medians and peaks. On CUDA every call ends with
torch.cuda.synchronize().

--head-shape N,H,V instead times the heads alone at a real head shape (the 0.5B head: 1024,896,151936), with
random fp32 hidden states and weights in place of the trunks, forward + backward of the PRM CE loss on the
per-sequence reward sums (16 sequences of N/16 tokens, outcome labels alternating): fused, one
linear_prime_rewards call; two-head, the PRM's linear_token_logprobs with grad, the reference's without, the
log-ratio and the per-sequence sums in torch, as prm.fused_head=false computes them.
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

PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu_addition.yaml"

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
    from primeflow.trainer.config import load_config
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
                config = load_config(PRESET)
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


def head_shape_run(n_rows: int, hidden: int, vocab: int, repeats: int, beta: float = 0.05) -> dict:
    """Fused vs two-head PRM head at one head shape (module docstring), interleaved rounds after a warm-up."""
    import torch.nn.functional as F
    from primeflow.kernels import linear_prime_rewards, linear_token_logprobs

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    n_seqs = 16
    h_prm = torch.randn(n_rows, hidden, generator=g).to(device).requires_grad_()
    w_prm = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).to(device).requires_grad_()
    h_ref = torch.randn(n_rows, hidden, generator=g).to(device)
    w_ref = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).to(device)
    labels = torch.randint(0, vocab, (n_rows,), generator=g).to(device)
    bounds = torch.linspace(0, n_rows, n_seqs + 1).round().long()
    cu_seqlens = bounds.to(torch.int32).to(device)
    seq_ids = torch.repeat_interleave(torch.arange(n_seqs), bounds.diff()).to(device)
    outcome = (torch.arange(n_seqs) % 2).float().to(device)

    def fused():
        out = linear_prime_rewards(labels, prm=(h_prm, w_prm), ref=(h_ref, w_ref), beta=beta, cu_seqlens=cu_seqlens)
        F.binary_cross_entropy_with_logits(out.seq_reward_sum, outcome).backward()

    def two_head():
        prm_logp = linear_token_logprobs(h_prm, w_prm, labels)
        with torch.no_grad():
            ref_logp = linear_token_logprobs(h_ref, w_ref, labels)
        reward = beta * (prm_logp - ref_logp)
        sums = torch.zeros(n_seqs, device=device).index_add(0, seq_ids, reward)
        F.binary_cross_entropy_with_logits(sums, outcome).backward()

    calls = {"fused": fused, "two_head": two_head}
    grads = {}
    for head, call in calls.items():  # the same loss and gradients, so the timing compares equal work
        h_prm.grad = w_prm.grad = None
        call()
        grads[head] = (h_prm.grad.clone(), w_prm.grad.clone())
    agreement = {name: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                 for name, a, b in zip(("dhidden", "dweight"), grads["fused"], grads["two_head"], strict=True)}
    times: dict[str, list[float]] = {h: [] for h in calls}
    cpu: dict[str, list[float]] = {h: [] for h in calls}
    for _ in range(repeats):
        for head, call in calls.items():
            h_prm.grad = w_prm.grad = None
            _sync()
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            _sync()
            times[head].append(time.perf_counter() - t0)
            cpu[head].append(time.process_time() - c0)
    peaks = {}
    for head, call in calls.items():
        h_prm.grad = w_prm.grad = None
        peaks[head] = _peak(call)
    res: dict = {h: {"min_s": min(t), "median_s": statistics.median(t), "min_cpu_s": min(cpu[h]),
                     "median_cpu_s": statistics.median(cpu[h]), "peak_extra_bytes": peaks[h]}
                 for h, t in times.items()}
    res["shape"] = {"n_rows": n_rows, "hidden": hidden, "vocab": vocab, "dtype": "float32", "sequences": n_seqs}
    res["grad_rel_diff_fused_vs_two_head"] = agreement
    res["fused_over_two_head_median"] = res["fused"]["median_s"] / res["two_head"]["median_s"]
    res["fused_over_two_head_median_cpu"] = res["fused"]["median_cpu_s"] / res["two_head"]["median_cpu_s"]
    res["fused_over_two_head_peak"] = res["fused"]["peak_extra_bytes"] / max(res["two_head"]["peak_extra_bytes"], 1)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--head-shape", default=None, metavar="N,H,V",
                        help="time the two heads alone at this shape (e.g. 1024,896,151936) instead of the stage")
    args = parser.parse_args()
    result = {"environment": environment(), "repeats": args.repeats}
    if args.head_shape:
        n_rows, hidden, vocab = (int(x) for x in args.head_shape.split(","))
        result["prm_head"] = head_shape_run(n_rows, hidden, vocab, args.repeats)
    else:
        result["prm_stage"] = run(args.repeats)
    print({k: v for k, v in result.items() if k != "environment"})
    if args.out is not None:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
