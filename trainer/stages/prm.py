"""The implicit PRM stage (prime_spec 3-4): reference log-probs, PRM log-probs, the token rewards
r_t = beta * (log pi_phi - log pi_ref), and the online PRM update with the CE loss on outcome labels.

Update modes (prm.update): `after` (single forward, the paper's and PRIME's default: each PRM mini-batch's
rewards come from the PRM before that mini-batch's optimizer step), `before` (double forward: update on the
whole batch, then score with the updated PRM), `none` (offline PRM, no update).
PRM mini-batches are contiguous slices of the batch in row order (PRIME does not shuffle them).
"""

from __future__ import annotations

import torch
from primeflow.kernels import prm_ce_loss, prm_pairwise_accuracy

from ..batch import TrainBatch
from ..config import Config
from ..models_setup import PrimeModels
from .logprobs import all_rows_sum, batch_logprobs, micro_batch_plan, row_index
from .optim_step import MicroLoss, chunks, minibatch_step
from .results import PRMScores

MiniBatches = list[tuple[list[int], list[list[int]]]]  # per PRM mini-batch: (rows, this rank's micro-batches)


def prm_minibatches(batch: TrainBatch, config: Config) -> MiniBatches:
    """The PRM update's mini-batches (contiguous row slices, in row order) with this rank's micro-batches."""
    return [(rows, micro_batch_plan(batch, rows, config.train.micro_batch_tokens))
            for rows in chunks(list(range(batch.rows)), config.prm.mini_batch_size)]


def prm_scoring_plan(batch: TrainBatch, config: Config, minibatches: MiniBatches) -> list[list[int]]:
    """The micro-batches the PRM's rewards are computed on: the update's own forwards in `after` mode, the
    whole batch packed within the budget otherwise."""
    if config.prm.update == "after":
        return [micro for _, plan in minibatches for micro in plan]
    return micro_batch_plan(batch, list(range(batch.rows)), config.train.micro_batch_tokens)


def reference_logprobs(models: PrimeModels, batch: TrainBatch, config: Config, plan: list[list[int]],
                       old_logp: torch.Tensor) -> torch.Tensor:
    """[B, R] log pi_ref: the frozen SFT copy, or the policy's old log-probs (ref_type=policy).

    The reference is scored on the PRM's own micro-batches: while the PRM still equals the reference (step
    0) both forwards then run identical GEMMs, so the log-ratio is exactly 0 and the CE exactly ln 2 on any
    host. Another packing changes the GEMM heights, and BLAS may sum in another order per height (1e-7 seen
    on AVX2-only hosts)."""
    if config.prime.ref_type == "policy":
        return old_logp
    return batch_logprobs(models.ref, batch, budget=config.train.micro_batch_tokens, plan=plan)


def prm_micro_loss(batch: TrainBatch, ref_BR: torch.Tensor, config: Config, minibatch_rows: list[int],
                   record_BR: torch.Tensor | None = None) -> MicroLoss:
    """The PRM CE loss share of a micro-batch (CE is a mean over the mini-batch's responses); writes the
    micro-batch's PRM log-probs into `record_BR` (on the last pipeline stage)."""
    mask, beta, n_rows = batch.response_mask, config.prime.beta, len(minibatch_rows)

    def share(micro: list[int], prm_logp: torch.Tensor) -> torch.Tensor:
        idx = row_index(micro, prm_logp)
        if record_BR is not None:
            record_BR.index_copy_(0, idx, prm_logp.detach())
        loss = prm_ce_loss(prm_logp, ref_BR.index_select(0, idx), mask.index_select(0, idx),
                           batch.outcome.index_select(0, idx), beta=beta)
        return loss * (len(micro) / n_rows)

    return MicroLoss(batch, share)


def _update(models: PrimeModels, batch: TrainBatch, ref_BR: torch.Tensor, config: Config,
            minibatches: MiniBatches, record_BR: torch.Tensor | None) -> list[float]:
    """PRM optimizer steps over the batch; writes this rank's pre-step PRM log-probs into `record_BR` (on the
    last pipeline stage; all_rows_sum then gives them to every rank)."""
    losses = []
    for rows, plan in minibatches:
        stats = minibatch_step(models.prm, models.prm_optim, plan,
                               prm_micro_loss(batch, ref_BR, config, rows, record_BR))
        losses.append(stats["loss"])
    models.prm_sched.step()
    return losses


def token_rewards(prm_BR: torch.Tensor, ref_BR: torch.Tensor, mask_BR: torch.Tensor, *, beta: float,
                  granularity: str) -> torch.Tensor:
    """fp32 [B, R]: beta * log-ratio on every valid token (`token`), or its sum on the last valid token
    (`whole`). Both inputs are fp32 log-probs accumulated in fp32, so the difference is exact to fp32."""
    q_BR = torch.where(mask_BR, prm_BR - ref_BR, 0.0)
    if granularity == "token":
        return beta * q_BR
    last_B = mask_BR.sum(-1).clamp(min=1) - 1
    whole = torch.zeros_like(q_BR)
    whole.scatter_(1, last_B.unsqueeze(1), beta * q_BR.sum(-1, keepdim=True))
    return torch.where(mask_BR, whole, 0.0)


def prm_stage(models: PrimeModels, batch: TrainBatch, config: Config, *, old_logp: torch.Tensor) -> PRMScores:
    """Scores the reference and the PRM and updates the PRM (prm.update: before / after the scoring, or
    none); the metrics are prm_loss and prm_acc."""
    minibatches = prm_minibatches(batch, config)
    scoring_plan = prm_scoring_plan(batch, config, minibatches)  # the reference is scored on the same one
    ref_BR = reference_logprobs(models, batch, config, scoring_plan, old_logp)
    budget, mode = config.train.micro_batch_tokens, config.prm.update
    losses: list[float] = []
    if mode == "after":
        record = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.device)
        losses = _update(models, batch, ref_BR, config, minibatches, record)
        prm_BR = all_rows_sum(record)
    else:
        if mode == "before":
            losses = _update(models, batch, ref_BR, config, minibatches, None)
        prm_BR = batch_logprobs(models.prm, batch, budget=budget, plan=scoring_plan)
    rewards = token_rewards(prm_BR, ref_BR, batch.response_mask, beta=config.prime.beta,
                            granularity=config.prime.granularity)
    with torch.no_grad():
        monitor = float(prm_ce_loss(prm_BR, ref_BR, batch.response_mask, batch.outcome, beta=config.prime.beta))
        acc = float(prm_pairwise_accuracy(rewards, batch.response_mask, batch.outcome, group_size=batch.group_size))
    metrics = {
        # the training loss of the update (mean over PRM mini-batches); `none` reports the CE of the scores
        "prm_loss": sum(losses) / len(losses) if losses else monitor,
        "prm_acc": acc,
    }
    return PRMScores(ref_BR, prm_BR, rewards, metrics)
