"""The trainer's training passes at PP=P, run under torchrun by test_pipeline_parallel.py.

    torchrun --nproc-per-node P tests/trainer/pp_parity.py --pp P --seed S --out RESULT.pt CKPT [CKPT ...]

For each checkpoint, on one random batch packed into >= 4 micro-batches of different token counts:
  * batch log-probs (the old log-probs of the batch) through the pipeline, broadcast to every stage;
  * policy: PPO-clip gradients (accumulate_grads), then one clipped AdamW step (minibatch_step);
  * PRM: CE-loss gradients of one mini-batch, then the whole PRM stage (`after` mode, 3 mini-batches):
    its rewards, metrics and updated weights;
  * SFT: the gradients of the SFT loss on an SFT batch, then one `run_sft` step with its HF export.
Every stage's tensors are gathered by HF name; rank 0 saves them (plus losses, norms, the micro-batch token
counts, and whether every rank held identical batch state) to RESULT.pt. The test compares the PP=2 file
with the PP=1 one.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import torch.distributed as dist
from primeflow.models import hf_state_dict
from primeflow.trainer import parallel
from primeflow.trainer.config import OptimConfig, ParallelConfig, SFTConfig
from primeflow.trainer.data import arithmetic_sft_pairs
from primeflow.trainer.models_setup import build_prime_models, trained_model
from primeflow.trainer.sft import run_sft, sft_batch, sft_micro_loss, tokenize_pairs
from primeflow.trainer.stages.logprobs import all_rows_sum, batch_logprobs, micro_batch_plan
from primeflow.trainer.stages.optim_step import accumulate_grads, minibatch_step
from primeflow.trainer.stages.policy import ppo_micro_loss
from primeflow.trainer.stages.prm import prm_micro_loss, prm_stage
from primeflow.trainer.stages.results import PolicyTargets
from safetensors.torch import load_file

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

BUDGET = 40  # tokens per micro-batch: 1-3 rows each


def _gather_named(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Union of every stage's HF-named tensors; a name held by two stages (a tied embedding's copies) must
    be bitwise equal on both."""
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {k: v.detach().cpu().clone() for k, v in local.items()})
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for name, t in part.items():
            if name in out:
                assert torch.equal(out[name], t), f"{name} differs between pipeline stages"
            out[name] = t
    return out


def _same_everywhere(t: torch.Tensor) -> bool:
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.detach().cpu())
    return all(torch.equal(parts[0], p) for p in parts)


def _tokens(batch, plan: list[list[int]]) -> list[int]:
    return [sum(batch.seq_lens[r] for r in mb) for mb in plan]


def check_policy(models, config, batch, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    current = batch_logprobs(models.policy, batch, budget=BUDGET)
    targets = PolicyTargets(
        old_logp=torch.where(batch.response_mask, current + (torch.rand(current.shape, generator=g) - 0.5), 0.0),
        advantages=torch.randn(current.shape, generator=g))
    rows = list(range(batch.rows))
    plan = micro_batch_plan(batch, rows, BUDGET)
    clipped = torch.zeros(1, dtype=torch.float64)
    loss = accumulate_grads(models.policy, models.policy_optim, plan,
                            ppo_micro_loss(models.policy, batch, targets, config, rows, clipped))
    all_rows_sum(clipped)  # counted on the last stage; as policy_stage does
    grads = _gather_named(hf_state_dict(models.policy, grads=True))
    # config.ppo.optim.grad_clip (main) is far below the norm: the step is clipped, so the TP/PP norm enters
    # the update
    stats = minibatch_step(models.policy, models.policy_optim, plan,
                           ppo_micro_loss(models.policy, batch, targets, config, rows))
    return {"logp": current, "logp_same": _same_everywhere(current), "loss": float(loss), "clipped": float(clipped[0]),
            "grads": grads, "grad_norm": stats.grad_norm, "step_loss": float(stats.loss),
            "weights": _gather_named(hf_state_dict(models.policy)), "tokens": _tokens(batch, plan)}


def check_prm(models, config, batch) -> dict:
    ref = batch_logprobs(models.ref, batch, budget=BUDGET)
    rows = list(range(4))
    plan = micro_batch_plan(batch, rows, 20)
    loss = accumulate_grads(models.prm, models.prm_optim, plan, prm_micro_loss(batch, ref, config, rows))
    grads = _gather_named(hf_state_dict(models.prm, grads=True))
    config.prm.update, config.prm.mini_batch_size, config.prm.optim.lr = "after", 4, 1e-3
    # PP > 1 runs the PRM stage's two-head path (stages/prm_head.fused_head_supported): PP=1 runs the same
    # path, so the comparison is of the pipeline alone (test_prm_fused_head.py compares the two heads)
    config.prm.fused_head = False
    config.train.micro_batch_tokens = BUDGET
    # the frozen reference scores itself (ref_type=freeze); old_logp would only be read for ref_type=policy,
    # and equals the reference's log-probs here anyway (the untrained policy is the same SFT copy)
    scores = prm_stage(models, batch, config, old_logp=ref)
    metrics, rewards = scores.metrics.read(), scores.token_rewards
    return {"loss": float(loss), "grads": grads, "tokens": _tokens(batch, plan), "metrics": metrics,
            "metrics_same": _same_everywhere(torch.tensor([metrics[k] for k in sorted(metrics)])),
            "rewards": rewards, "rewards_same": _same_everywhere(rewards),
            "weights": _gather_named(hf_state_dict(models.prm))}


def check_sft(ckpt: Path, out: Path, seed: int) -> dict:
    from transformers import AutoTokenizer

    pairs = arithmetic_sft_pairs(8, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    prompts, responses = tokenize_pairs(tokenizer, pairs)
    batch = sft_batch(prompts, responses, tokenizer.pad_token_id)
    model, optim, _ = trained_model(ckpt, role="policy", dtype="float32", optim=OptimConfig(),
                                    parallel_cfg=ParallelConfig())
    plan = micro_batch_plan(batch, list(range(batch.rows)), 60)
    loss = accumulate_grads(model, optim, plan, sft_micro_loss(batch))
    grads = _gather_named(hf_state_dict(model, grads=True))
    logged: list[str] = []
    run_sft(ckpt, out, pairs, SFTConfig(steps=1, batch_size=8, lr=1e-3, warmup_steps=0), seed=seed,
            micro_batch_tokens=60, log=logged.append)
    exported = {}
    for f in sorted(out.glob("*.safetensors")):
        exported.update(load_file(str(f)))
    return {"loss": float(loss), "grads": grads, "tokens": _tokens(batch, plan), "log": logged[0].split("(")[0],
            "exported": exported}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pp", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("ckpts", nargs="+", type=Path)
    args = ap.parse_args()
    layout = parallel.init_distributed(tp=1, pp=args.pp, backend="gloo")
    assert layout.pp == args.pp and layout.dp == 1
    results = {}
    for i, ckpt in enumerate(args.ckpts):
        torch.manual_seed(args.seed)
        config = helpers.frozen_reference_config()
        config.ppo.optim.grad_clip = 1e-3  # far below the policy's grad norm: check_policy's step is clipped
        models = build_prime_models(config, ckpt)
        batch = helpers.random_rollouts(args.seed)
        results[ckpt.name] = {
            "policy": check_policy(models, config, batch, args.seed),
            "prm": check_prm(models, config, batch),
            "sft": check_sft(ckpt, args.out.parent / f"sft_pp{args.pp}_{i}", args.seed),
        }
    if layout.is_rank0:
        torch.save(results, args.out)
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
