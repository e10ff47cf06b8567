"""The PPO-clip policy update (prime_spec 8): rows shuffled into mini-batches (one optimizer step each),
packed micro-batches, no KL, no entropy bonus. The shuffle is seeded by (train.seed, step), so a resumed run
takes exactly the same mini-batches."""

from __future__ import annotations

import torch
from primeflow.kernels import ppo_clip_loss

from ..batch import TrainBatch
from ..config import Config
from ..models_setup import PrimeModels
from .logprobs import all_rows_sum, micro_batch_plan, row_index
from .optim_step import MicroLoss, chunks, minibatch_step
from .results import PolicyTargets
from .step_metrics import DeviceMetrics


def _normaliser(batch: TrainBatch, rows: list[int], agg: str) -> float:
    """The count the loss is averaged over (tokens, or responses with tokens) among `rows` (host integers:
    no device read-back per micro-batch)."""
    n_tokens = [batch.response_lens[r] for r in rows]
    return float(sum(n_tokens) if agg == "token-mean" else sum(n > 0 for n in n_tokens))


def ppo_micro_loss(policy: torch.nn.Module, batch: TrainBatch, targets: PolicyTargets, config: Config,
                   minibatch_rows: list[int], clip_counter: torch.Tensor | None = None) -> MicroLoss:
    """The micro-batch loss share for a mini-batch: ppo_clip_loss on the micro-batch times
    (micro-batch count / mini-batch count) of the aggregation's unit, so shares sum to the mini-batch loss.
    `policy` is the model the shares are taken from (log-probs at the rollout temperature; accumulate_grads
    runs it). `clip_counter` collects clipped-token counts (on the last pipeline stage)."""
    del policy  # the model is given to accumulate_grads; kept for the call sites' readability
    ppo = config.ppo
    old, adv, mask = targets.old_logp, targets.advantages, batch.response_mask
    total = max(_normaliser(batch, minibatch_rows, ppo.agg), 1.0)

    def share(micro: list[int], logp: torch.Tensor) -> torch.Tensor:
        idx = row_index(micro, logp)
        loss, stats = ppo_clip_loss(logp, old.index_select(0, idx), adv.index_select(0, idx),
                                    mask.index_select(0, idx), clip=ppo.clip, agg=ppo.agg, return_stats=True)
        if clip_counter is not None:  # stays on the device: read once per step
            clip_counter.add_(stats.clipfrac.double() * sum(batch.response_lens[r] for r in micro))
        return loss * (_normaliser(batch, micro, ppo.agg) / total)

    return MicroLoss(batch, share, temperature=config.rollout.temperature)


def shuffled_rows(n_rows: int, gen: torch.Generator) -> list[int]:
    """The rows in the order of a CPU generator's permutation (a host tensor: reading it is no device sync)."""
    return torch.randperm(n_rows, generator=gen).tolist()


def policy_stage(models: PrimeModels, batch: TrainBatch, config: Config, targets: PolicyTargets, *,
                 step: int) -> DeviceMetrics:
    """ppo.epochs passes of PPO-clip optimizer steps; the metrics pg_loss, pg_clipfrac and policy_grad_norm
    (means over the optimizer steps), on the device."""
    ppo = config.ppo
    gen = torch.Generator().manual_seed(config.train.seed * 1_000_003 + step)
    losses, norms = [], []
    clipped = torch.zeros(1, dtype=torch.float64, device=batch.device)
    for _ in range(ppo.epochs):
        order = shuffled_rows(batch.rows, gen)
        for rows in chunks(order, ppo.mini_batch_size):
            plan = micro_batch_plan(batch, rows, config.train.micro_batch_tokens)
            loss_fn = ppo_micro_loss(models.policy, batch, targets, config, rows, clipped)
            stats = minibatch_step(models.policy, models.policy_optim, plan, loss_fn)
            losses.append(stats.loss)
            norms.append(stats.grad_norm)
    models.policy_sched.step()
    clipped = all_rows_sum(clipped)  # per-rank clip counts, summed over DP (from the last PP stage)
    return DeviceMetrics({
        "pg_loss": torch.stack(losses).mean(),
        "pg_clipfrac": clipped[0] / max(sum(batch.response_lens) * ppo.epochs, 1),
        "policy_grad_norm": sum(norms) / len(norms),
    })
