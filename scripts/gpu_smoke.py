"""GPU smoke test of the training path (scripts/gpu_smoke.sh runs it; a few minutes on one H100/H200).

Needs only torch, triton, transformers and megatron-core (no vLLM: the rollouts are sampled with transformers'
`generate` from the same checkpoint, trainer/rollout/hf_sampler.py, so the trainer side is measured alone on
real samples with a real sampler's log-probs; `--rollouts synthetic` uses random tokens instead). Sections,
each recorded even if another fails:
  kernels  the compiled Triton kernels on CUDA (no interpreter) against float64 references on fresh random
           inputs: token_logprobs and linear_token_logprobs (values and gradients, bf16 and fp32),
           rloo_advantages, prm_ce_loss, ppo_clip_loss; max errors, the bound used, pass/fail, and each
           forward+backward's time against torch eager.
  tiles    the fused head (linear_token_logprobs, bf16) at the 7B head's H and V with the fixed tiles and under
           PRIMEFLOW_KERNEL_AUTOTUNE=1 (linear_logprob/tiles.py): each forward+backward's time, the tiles
           the autotuner chose, and the two results' largest difference (bounded by the bf16 rule above).
  trainer  one PRIME step's training stages on CUDA in bf16 with fp32 masters (megatron-core DDP + optimizer,
           NCCL world of 1): old log-probs, PRM stage (rewards of the first PRM mini-batch must be exactly 0),
           advantages, policy update; per stage: seconds and torch.cuda.max_memory_allocated; and the
           sampler-vs-trainer log-prob mismatch (mean, max) on the sampled tokens. The rollouts are 16
           built-in chain-arithmetic prompts x 4 samples; their outcomes alternate within each group
           (assigned, not verified: a random-weight model answers none right, and the stages need both).
Writes one JSON (--out). `--device cpu` runs the same code on CPU (gloo, CPU kernels) as a dry run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` lives at the repository root

BF16_REL = 2.0**-7  # bf16 inputs: the torch bf16 path itself is off from float64 by ~1 bf16 ulp
FP32_REL = 1e-4     # fp32 inputs; TF32 would show up here as ~1e-3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int = 5) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max()) / max(float(want.abs().max()), 1e-30)


def _check(name: str, got: torch.Tensor, want: torch.Tensor, bound: float) -> dict:
    err = _rel(got, want)
    return {"what": name, "rel_err": err, "bound": bound, "ok": bool(err <= bound)}


def kernel_checks(device: torch.device) -> list[dict]:
    from primeflow.kernels import (
        linear_token_logprobs,
        linear_token_logprobs_backend,
        token_logprobs,
        token_logprobs_backend,
    )

    results = []
    seed = int(time.time()) % 2**31
    g = torch.Generator(device="cpu").manual_seed(seed)
    gpu = device.type == "cuda"  # the CPU dry run uses small shapes
    for dtype, bound in ((torch.bfloat16, BF16_REL), (torch.float32, FP32_REL)):
        N, V = (4096, 32768) if gpu else (128, 2048)
        logits = (torch.randn(N, V, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_()
        labels = torch.randint(0, V, (N,), generator=g).to(device)
        logp = token_logprobs(logits, labels)
        z64 = logits.detach().double().requires_grad_()
        want = torch.log_softmax(z64, -1).gather(-1, labels[:, None])[:, 0]
        w = torch.randn(N, generator=g, dtype=torch.float64).to(device)
        (logp.double() * w).sum().backward()
        (want * w).sum().backward()
        entry = {"op": "token_logprobs", "dtype": str(dtype), "shape": [N, V], "seed": seed,
                 "backend": token_logprobs_backend(logits).name,
                 "checks": [_check("logp", logp.detach(), want.detach(), bound),
                            _check("dlogits", logits.grad, z64.grad, bound)]}

        def ours():
            token_logprobs(logits, labels).sum().backward()

        def eager():
            torch.log_softmax(logits.float(), -1).gather(-1, labels[:, None]).sum().backward()

        entry["seconds"] = {"primeflow": _timed(ours, device), "torch_eager": _timed(eager, device)}
        results.append(entry)

        N, H, V = (2048, 1024, 32768) if gpu else (64, 128, 2048)
        hidden = (torch.randn(N, H, generator=g)).to(device=device, dtype=dtype).requires_grad_()
        weight = (torch.randn(V, H, generator=g) * H**-0.5).to(device=device, dtype=dtype).requires_grad_()
        labels = torch.randint(0, V, (N,), generator=g).to(device)
        logp = linear_token_logprobs(hidden, weight, labels)
        h64 = hidden.detach().double().requires_grad_()
        w64 = weight.detach().double().requires_grad_()
        want = torch.log_softmax(h64 @ w64.t(), -1).gather(-1, labels[:, None])[:, 0]
        r = torch.randn(N, generator=g, dtype=torch.float64).to(device)
        (logp.double() * r).sum().backward()
        (want * r).sum().backward()
        entry = {"op": "linear_token_logprobs", "dtype": str(dtype), "shape": [N, H, V],
                 "backend": linear_token_logprobs_backend(hidden).name,
                 "checks": [_check("logp", logp.detach(), want.detach(), bound),
                            _check("dhidden", hidden.grad, h64.grad, bound),
                            _check("dweight", weight.grad, w64.grad, bound)]}

        def fused():
            linear_token_logprobs(hidden, weight, labels).sum().backward()

        def naive():
            torch.log_softmax((hidden @ weight.t()).float(), -1).gather(-1, labels[:, None]).sum().backward()

        entry["seconds"] = {"primeflow": _timed(fused, device), "torch_eager": _timed(naive, device)}
        results.append(entry)
    results.append(_rl_op_checks(device, g))
    return results


@contextlib.contextmanager
def _env(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def head_tiles(device: torch.device) -> dict:
    """linear_token_logprobs forward+backward, bf16, at the 7B head (H 3584, V 152064; small on CPU): fixed
    tiles vs autotuned (the first autotuned call tunes; timings are best of 5 after it). On CPU nothing is
    tuned (autotune_engaged False) and the speedup is noise."""
    from primeflow.kernels import linear_token_logprobs
    from primeflow.kernels._backend import triton_interpret
    from primeflow.kernels.linear_logprob import tiles, triton_op

    gpu = device.type == "cuda"
    N, H, V = (4096, 3584, 152064) if gpu else (64, 128, 2048)
    g = torch.Generator(device="cpu").manual_seed(int(time.time()) % 2**31)
    hidden = torch.randn(N, H, generator=g).to(device=device, dtype=torch.bfloat16).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * H**-0.5).to(device=device, dtype=torch.bfloat16).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=g).to(device)
    r = torch.randn(N, generator=g).to(device)

    def step():
        hidden.grad = weight.grad = None
        (linear_token_logprobs(hidden, weight, labels) * r).sum().backward()

    out: dict = {"shape": [N, H, V], "tiles": tiles.describe()}
    results = {}
    for mode in ("0", "1"):
        with _env(tiles.AUTOTUNE_ENV, mode):
            start = time.perf_counter()
            step()
            _sync(device)
            first = time.perf_counter() - start
            results[mode] = (linear_token_logprobs(hidden, weight, labels).detach(), hidden.grad.clone(),
                             weight.grad.clone())
            out[f"autotune={mode}"] = {"first_call_s": first, "fwd_bwd_s": _timed(step, device)}
            if mode == "1":
                out["autotune_engaged"] = tiles.autotunes(hidden, triton_interpret())
    if out["autotune_engaged"]:
        out["chosen"] = {k: str(triton_op._autotuned(k).best_config) for k in ("stats", "dz")}
    out["checks"] = [_check(f"{name} autotuned vs fixed", tuned, fixed.double(), BF16_REL)
                     for name, tuned, fixed in zip(("logp", "dhidden", "dweight"), results["1"], results["0"],
                                                   strict=True)]
    out["speedup"] = out["autotune=0"]["fwd_bwd_s"] / out["autotune=1"]["fwd_bwd_s"]
    return out


def _rl_op_checks(device: torch.device, g: torch.Generator) -> dict:
    """The RL losses and the RLOO reduction on CUDA against primeflow.kernels.reference in float64."""
    from primeflow.kernels import ppo_clip_loss, prm_ce_loss, reference, rloo_advantages

    B, R, K = 64, 512, 4
    lengths = torch.randint(1, R + 1, (B,), generator=g)
    mask = (torch.arange(R)[None, :] < lengths[:, None]).to(device)
    rewards = (torch.randn(B, R, generator=g) * 0.1).to(device)
    outcome = (torch.rand(B, generator=g) > 0.5).float().to(device)
    kwargs = dict(group_size=K, gamma_process=1.0, gamma_outcome=1.0, reward_norm="batch_norm", form="prime",
                  whiten=True, process_coef=1.0, outcome_coef=1.0)
    adv = rloo_advantages(rewards, outcome, mask, **kwargs)
    want = reference.rloo_advantages(rewards.double(), outcome.double(), mask, **kwargs)
    logp = (torch.randn(B, R, generator=g) * 0.5 - 1).to(device).requires_grad_()
    old = logp.detach() + (torch.rand(B, R, generator=g).to(device) - 0.5) * 0.2
    loss = ppo_clip_loss(logp, old, adv.detach(), mask, clip=0.2, agg="token-mean")
    want_loss = reference.ppo_clip_loss(logp.detach().double(), old.double(), adv.detach().double(), mask,
                                        clip=0.2, agg="token-mean")
    ref_lp = logp.detach() - 0.01
    ce = prm_ce_loss(logp, ref_lp, mask, outcome, beta=0.05)
    want_ce = reference.prm_ce_loss(logp.detach().double(), ref_lp.double(), mask, outcome.double(), beta=0.05)
    return {"op": "rl_ops", "shape": [B, R],
            "checks": [_check("rloo_advantages", adv, want, FP32_REL),
                       _check("ppo_clip_loss", loss.detach().reshape(1), torch.as_tensor(want_loss).reshape(1),
                              FP32_REL),
                       _check("prm_ce_loss", ce.detach().reshape(1), torch.as_tensor(want_ce).reshape(1), FP32_REL)]}


def sampled_rollouts(ckpt: Path, device: torch.device, *, prompts: int = 16, n: int = 4, max_tokens: int = 128):
    """A host TrainBatch of `prompts` x `n` responses sampled with transformers from `ckpt` on `device`
    (bf16 on CUDA, fp32 on CPU), outcomes alternating within each group (see the module docstring)."""
    from primeflow.trainer.batch import build_train_batch
    from primeflow.trainer.data.chain_arithmetic import chain_task
    from primeflow.trainer.data.encode import encode_prompts
    from primeflow.trainer.rollout.hf_sampler import sample_responses
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dtype).to(device).eval()
    eos = {tokenizer.eos_token_id}
    ids = encode_prompts(tokenizer, chain_task(prompts, seed=0), max_prompt_len=1024)
    got = sample_responses(model, ids, n=n, max_tokens=max_tokens, eos_ids=eos, pad_id=tokenizer.pad_token_id,
                           seed=0)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the sampler's copy of the weights is not part of the trainer's memory
    outcome = [float(i % 2) for i in range(len(got.response_ids))]
    return build_train_batch(got.prompt_ids, got.response_ids, got.logprobs, got.finish_reasons, outcome,
                             group_size=n, eos_ids=eos, pad_id=tokenizer.pad_token_id)


def trainer_step(device: torch.device, size: str, workdir: Path, rollouts: str = "transformers") -> dict:
    from primeflow.kernels import trusted_values
    from primeflow.trainer import parallel
    from primeflow.trainer.batch import check_batch_values
    from primeflow.trainer.config import Config
    from primeflow.trainer.models_setup import build_prime_models
    from primeflow.trainer.rollout.metrics import logprob_mismatch
    from primeflow.trainer.stages.advantage import advantage_stage
    from primeflow.trainer.stages.logprobs import batch_logprobs
    from primeflow.trainer.stages.policy import policy_stage
    from primeflow.trainer.stages.prm import prm_stage
    from primeflow.trainer.stages.results import PolicyTargets

    from bench.bench_train_step import checkpoint_of_size, random_rollouts

    ckpt = checkpoint_of_size(size, workdir)
    config = Config()
    config.prime.ref_type = "freeze"  # the 7B presets' frozen reference: the PRM stage runs the fused head
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    config.model.params_dtype = config.model.ref_dtype = dtype
    config.prm.mini_batch_size = config.ppo.mini_batch_size = 16
    out: dict = {"size": size, "dtype": dtype, "stages": {}}
    # as trainer/train.py runs a step: once the batch's values were checked on the host, the stages skip the
    # kernels' per-call value reads (device syncs that would otherwise be in the timings)
    host_checked = rollouts == "transformers"

    def stage(name: str, fn):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        with trusted_values() if host_checked else contextlib.nullcontext():
            result = fn()
        _sync(device)
        entry = {"seconds": time.perf_counter() - t0}
        if device.type == "cuda":
            entry["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
        out["stages"][name] = entry
        return result

    models = stage("build_models", lambda: build_prime_models(config, ckpt))
    if rollouts == "transformers":
        host = stage("rollout_transformers", lambda: sampled_rollouts(ckpt, device))
        check_batch_values(host, vocab_size=config_vocab(ckpt))
        batch = host.to(parallel.device())
    else:
        batch = random_rollouts(config_vocab(ckpt), rows=64)
    assert batch.device == parallel.device()
    out["rollouts"] = {"kind": rollouts, "rows": batch.rows, "response_tokens": sum(batch.response_lens)}
    old_logp = stage("old_logp", lambda: batch_logprobs(models.policy, batch, budget=8192))
    if rollouts == "transformers":
        mean, worst = logprob_mismatch(batch.vllm_logp, old_logp, batch.response_mask)
        out["sampler_vs_trainer_logprob"] = {"mean_abs": mean, "max_abs": worst}
    scores = stage("prm", lambda: prm_stage(models, batch, config, old_logp=old_logp))
    out["prm"] = scores.metrics.read()
    first = scores.token_rewards[:config.prm.mini_batch_size]
    out["first_prm_minibatch_rewards_exactly_zero"] = bool(first.abs().max() == 0)
    adv = stage("advantage", lambda: advantage_stage(batch, config, old_logp=old_logp,
                                                     token_rewards=scores.token_rewards))
    out["advantage"] = adv.metrics.read()
    targets = PolicyTargets(old_logp, adv.advantages)
    out["policy"] = stage("policy", lambda: policy_stage(models, batch, config, targets, step=1)).read()
    out["tokens"] = int(sum(batch.seq_lens))
    return out


def config_vocab(ckpt: Path) -> int:
    return int(json.loads((ckpt / "config.json").read_text())["vocab_size"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--size", default="60M", help="bench.bench_refit.SIZES: tiny, 60M, 0.5B, 7B")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--rollouts", choices=("transformers", "synthetic"), default="transformers",
                    help="sampled with transformers from the checkpoint (default) or random tokens")
    ap.add_argument("--skip-trainer", action="store_true", help="kernel checks only (make validate-kernels)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for a dry run")
    from primeflow.trainer import parallel

    from bench.hardware import environment

    parallel.init_distributed(backend="nccl" if args.device == "cuda" else "gloo")
    device = parallel.device()
    report: dict = {"environment": environment(), "device": str(device)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    sections = [] if args.skip_trainer else [
        ("trainer", lambda: trainer_step(device, args.size, args.out.parent, args.rollouts))]
    if not args.skip_kernels:
        sections[:0] = [("kernels", lambda: kernel_checks(device)), ("tiles", lambda: head_tiles(device))]
    for name, fn in sections:
        try:
            report[name] = fn()
        except Exception:  # record it and go on: one broken section must not hide the others' numbers
            report[name] = {"error": traceback.format_exc()}
        args.out.write_text(json.dumps(report, indent=1, default=str))
        print(f"== {name}:", json.dumps(report[name], default=str)[:3000], flush=True)
    from primeflow.kernels.linear_logprob import cpu as grad_driver

    # False when this build lacked CUDA's addmm.dtype_out: the bf16 backward then widened its operands
    report["fused_bf16_grad_accumulate"] = grad_driver._fused_lowp_accumulate
    args.out.write_text(json.dumps(report, indent=1, default=str))
    parallel.shutdown()
    checked = [*report.get("kernels", []), report.get("tiles", {})]
    failed = [c for k in checked if isinstance(k, dict) for c in k.get("checks", []) if not c["ok"]]
    broken = [n for n, _ in sections if isinstance(report.get(n), dict) and "error" in report[n]]
    print("GPU SMOKE:", "FAILED" if failed or broken else "passed", f"(failed checks {len(failed)}, "
          f"broken sections {broken})")
    return 1 if failed or broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
