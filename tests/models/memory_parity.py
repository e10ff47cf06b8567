"""Activation recompute and sequence parallelism change nothing, run under torchrun over gloo by
test_activation_memory.py:

    torchrun --nproc_per_node=N tests/models/memory_parity.py --tp T --out RESULT.json CKPT [CKPT ...]

For each checkpoint and each ActivationMemory variant: build + load with TP=T, score a random padded batch
(sequence_logprobs; an odd packed token count, so sequence parallelism pads it), backward a random weighting
of the log-probs, and compare log-probs and every parameter's gradient (this rank's shard) with the variant
that neither recomputes nor shards the sequence. Rank 0 writes RESULT.json: per variant what ran
(forward calls of attention cores and MLPs, tokens per layer) and the largest absolute log-prob and gradient
differences, each gradient difference also relative to the largest |gradient| of that parameter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder only (not tests/: see conftest.py)
import dist as dist_helper  # noqa: E402
import parity  # noqa: E402
from primeflow.models import (  # noqa: E402
    ModelConfig,
    build_model,
    load_hf_checkpoint,
    sequence_logprobs,
    unwrap_model,  # noqa: E402
)
from primeflow.models.memory import ActivationMemory  # noqa: E402
from primeflow.trainer.optimizer import finalize_grads, wrap_for_training  # noqa: E402

VARIANTS = {
    "baseline": ActivationMemory(),
    "full_uniform": ActivationMemory(recompute="full", recompute_method="uniform", recompute_num_layers=1),
    "full_block": ActivationMemory(recompute="full", recompute_method="block", recompute_num_layers=1),
    "selective": ActivationMemory(recompute="selective", recompute_modules=("core_attn", "mlp")),
    "sequence_parallel": ActivationMemory(sequence_parallel=True),
    "sp_full": ActivationMemory(recompute="full", sequence_parallel=True),
}


def score_and_backward(ckpt: Path, memory: ActivationMemory, seed: int):
    cfg = ModelConfig.from_hf(ckpt)
    inner = build_model(cfg, role="policy", params_dtype=torch.float32, memory=memory)
    load_hf_checkpoint(inner, ckpt)
    # the trainer's path: megatron-core DDP, backward, finalize_model_grads (which all-reduces the
    # sequence-parallel norm weights' partial gradients over TP), gradients read from main_grad
    model = wrap_for_training(inner, distributed_optimizer=False, overlap_grad_reduce=False)
    # What ran, to show each variant is really on: forward calls of the attention cores and MLPs (recompute
    # runs them again in backward) and the token count each layer sees (1/tp of them under SP).
    calls = {"core_attention": 0, "mlp": 0}
    layer_tokens: list[int] = []
    for name, module in inner.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in calls:
            module.register_forward_hook(lambda *_, kind=kind: calls.__setitem__(kind, calls[kind] + 1))
        if kind == "input_layernorm":
            module.register_forward_hook(lambda _m, args, _out: layer_tokens.append(args[0].shape[0]))
    ids, mask = parity.random_batch(cfg.vocab_size, seed, B=3, T=12)
    mask[1, 9:] = 0  # 12 + 9 + 12 = 33 tokens: odd, so TP=2 sequence parallelism pads one token
    model.train()
    logp = sequence_logprobs(model, ids, attention_mask=mask)
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(seed + 1))
    (logp * weights).sum().backward()
    finalize_grads(model)
    grads = {name: p.main_grad.detach().clone() for name, p in unwrap_model(model).named_parameters()
             if p.requires_grad}
    return logp.detach(), grads, {**calls, "layer_tokens": sorted(set(layer_tokens))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("ckpts", nargs="+", type=Path)
    args = ap.parse_args()
    dist_helper.init_parallel(tp=args.tp)
    results: dict[str, dict] = {}
    for ckpt in args.ckpts:
        want_logp, want_grads, ran = score_and_backward(ckpt, VARIANTS["baseline"], args.seed)
        per_variant = {"baseline": {"ran": ran}}
        for name, memory in VARIANTS.items():
            if name == "baseline":
                continue
            logp, grads, ran = score_and_backward(ckpt, memory, args.seed)
            assert grads.keys() == want_grads.keys(), f"{name}: parameters with gradients differ"
            grad_abs = {k: float((grads[k] - want_grads[k]).abs().max()) for k in grads}
            grad_rel = {k: grad_abs[k] / max(float(want_grads[k].abs().max()), 1e-30) for k in grads}
            per_variant[name] = {
                "ran": ran,
                "logp_max_abs": float((logp - want_logp).abs().max()),
                "logp_bitwise": bool(torch.equal(logp, want_logp)),
                "grads_bitwise": all(torch.equal(grads[k], want_grads[k]) for k in grads),
                "grad_max_abs": max(grad_abs.values()),
                "grad_max_rel": max(grad_rel.values()),
                "worst_param": max(grad_rel, key=grad_rel.get),
                "differing_params": sorted(k for k in grads if not torch.equal(grads[k], want_grads[k])),
            }
        results[ckpt.name] = per_variant
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps({"tp": args.tp, "ranks": gathered}, indent=1))
    dist_helper.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
