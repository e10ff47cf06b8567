"""The PRM stage at TP=2 on the fused head and on the two-head path, run under torchrun by
test_tp_fused_head.py:

    torchrun --nproc-per-node 2 tests/trainer/tp_fused_head.py --seed S --out RESULT.pt CKPT

For each case (sequence parallelism off/on x prm.update after/none) and each head (prm.fused_head true:
ONE vocab-parallel linear_prime_rewards call per micro-batch; false: two linear_token_logprobs heads), on
fresh tiny fp32 models from one checkpoint whose PRM is perturbed identically: the stage's scores, metrics,
the PRM gradients at the optimizer step (TP-gathered, HF names) and the PRM after it; whether every TP rank
held bitwise-identical scores; how many fused-head calls ran; and max |z| over both models' logits (the
scale of the fp32 logit rounding). Rank 0 saves them to RESULT.pt; the test compares the two heads.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import primeflow.trainer.stages.prm_head as prm_head
import torch
import torch.distributed as dist
from primeflow.models import hf_state_dict
from primeflow.models.hidden import final_hidden_states, output_weight
from primeflow.models.logprobs import pack_rows, token_multiple
from primeflow.trainer import parallel
from primeflow.trainer.config import Config
from primeflow.trainer.models_setup import build_prime_models
from primeflow.trainer.stages.logprobs import micro_batch_tensors
from primeflow.trainer.stages.prm import prm_stage

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

LR = 1e-3
PERTURB = 0.1
MICRO_TOKENS = 80  # several micro-batches per PRM mini-batch
CASES = [(False, "after"), (True, "after"), (False, "none")]  # (sequence_parallel, prm.update)


def _config(sequence_parallel: bool, update: str, fused: bool) -> Config:
    c = helpers.frozen_reference_config()
    c.parallel.tp, c.parallel.sequence_parallel = 2, sequence_parallel
    c.prm.update, c.prm.fused_head = update, fused
    c.prm.mini_batch_size = 12  # one PRM mini-batch: every `after` reward comes from the pre-step PRM
    c.prm.optim.lr = LR
    c.train.micro_batch_tokens = MICRO_TOKENS
    return c


def _perturb(models, seed: int) -> None:
    """The same draw on every TP rank: replicated parameters stay equal over TP, shards are perturbed alike
    on both heads' runs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in models.prm.parameters():
            p.mul_(1.0 + PERTURB * torch.randn(p.shape, generator=g))


def _same_on_tp_ranks(t: torch.Tensor) -> bool:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return all(torch.equal(parts[0], p) for p in parts)


def _max_logit(models, batch) -> float:
    rows = list(range(batch.rows))
    input_ids, _, lengths = micro_batch_tensors(batch, rows)
    packed = pack_rows(input_ids, [0] * len(rows), lengths, multiple_of=token_multiple(models.prm))
    with torch.no_grad():
        local = max(float((final_hidden_states(m, packed) @ output_weight(m).T).abs().max())
                    for m in (models.prm, models.ref))
    top = torch.tensor([local], dtype=torch.float64)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return float(top)


def run_case(ckpt: Path, sequence_parallel: bool, update: str, fused: bool, seed: int) -> dict:
    config = _config(sequence_parallel, update, fused)
    models = build_prime_models(config, ckpt)
    assert prm_head.fused_head_supported(models, config) is fused
    _perturb(models, seed)
    batch = helpers.random_rollouts(seed)
    grads: list[dict[str, torch.Tensor]] = []
    step = models.prm_optim.step

    def step_and_keep_grads():
        grads.append(hf_state_dict(models.prm, grads=True))
        return step()

    models.prm_optim.step = step_and_keep_grads
    calls = []
    real_head = prm_head.linear_prime_rewards
    prm_head.linear_prime_rewards = lambda *a, **k: calls.append(k.get("tp_group")) or real_head(*a, **k)
    try:
        old_logp = torch.zeros(batch.response_mask.shape)  # read only for ref_type=policy
        scores = prm_stage(models, batch, config, old_logp=old_logp)
    finally:
        prm_head.linear_prime_rewards = real_head
    out = {"ref_logp": scores.ref_logp, "prm_logp": scores.prm_logp, "token_rewards": scores.token_rewards,
           "metrics": scores.metrics.read(), "grads": grads, "params": hf_state_dict(models.prm),
           "fused_calls": len(calls), "tp_group_given": all(g is not None for g in calls),
           "max_logit": _max_logit(models, batch), "mask": batch.response_mask,
           "response_lens": list(batch.response_lens), "beta": config.prime.beta}
    out["scores_same_on_tp_ranks"] = _same_on_tp_ranks(
        torch.cat([scores.ref_logp, scores.prm_logp, scores.token_rewards]).detach())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("ckpt", type=Path)
    args = ap.parse_args()
    layout = parallel.init_distributed(tp=2, pp=1, backend="gloo")
    assert layout.tp == 2 and layout.dp == 1
    torch.set_num_threads(1)
    results = {}
    for sequence_parallel, update in CASES:
        for fused in (True, False):
            torch.manual_seed(args.seed)
            key = f"sp={int(sequence_parallel)} {update} {'fused' if fused else 'two-head'}"
            results[key] = run_case(args.ckpt, sequence_parallel, update, fused, args.seed)
    if layout.is_rank0:
        torch.save(results, args.out)
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
