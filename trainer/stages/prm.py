"""The implicit PRM stage (prime_spec 3-4): reference log-probs, PRM log-probs, the token rewards
r_t = beta * (log pi_phi - log pi_ref), and the online PRM update with the CE loss on outcome labels.

Update modes (prm.update): `after` (single forward, the paper's and PRIME's default: each PRM mini-batch's
rewards come from the PRM before that mini-batch's optimizer step), `before` (double forward: update on the
whole batch, then score with the updated PRM), `none` (offline PRM, no update).
PRM mini-batches are contiguous slices of the batch in row order (PRIME does not shuffle them).

Two heads compute it, chosen in one place (prm_head.fused_head_supported): the fused head (prm_head.py: per
micro-batch both trunks, then ONE linear_prime_rewards call for both models' log-probs, the rewards and
their per-response sums) and the two-head path (the reference and the PRM each through their own
linear_token_logprobs head, the log-ratio in torch), kept for ref_type=policy, PP > 1 and
prm.fused_head=false. Both run the same number of trunk passes: `after` scores the reference on the update's
own micro-batches; `before` takes the reference from the update's forwards and then scores the updated PRM
alone (the reference does not change, so a second reference pass would only cost).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from primeflow.kernels import prm_ce_loss, prm_ce_terms, prm_pairwise_accuracy

from ..batch import TrainBatch
from ..config import Config
from ..models_setup import PrimeModels
from .logprobs import all_rows_sum, batch_logprobs, micro_batch_plan, row_index
from .optim_step import MicroLoss, chunks, minibatch_step
from .prm_ce import balanced_ce_sum, class_weights
from .prm_head import HeadRecord, HeadScores, evaluating, fused_head_scores, fused_head_supported, score_with_head
from .results import PRMScores
from .step_metrics import DeviceMetrics

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


def _balanced_weights(batch: TrainBatch, config: Config,
                      minibatch_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """prm.ce_weighting=class_balanced: the mini-batch's class weights (prm_ce.py); None for the mean CE."""
    if config.prm.ce_weighting != "class_balanced":
        return None
    return class_weights(batch.outcome.index_select(0, row_index(minibatch_rows, batch.outcome)))


def prm_micro_loss(batch: TrainBatch, ref_BR: torch.Tensor, config: Config, minibatch_rows: list[int],
                   record_BR: torch.Tensor | None = None) -> MicroLoss:
    """The PRM CE loss share of a micro-batch (CE is a mean over the mini-batch's responses); writes the
    micro-batch's PRM log-probs into `record_BR` (on the last pipeline stage)."""
    mask, beta, n_rows = batch.response_mask, config.prime.beta, len(minibatch_rows)
    weights = _balanced_weights(batch, config, minibatch_rows)

    def share(micro: list[int], prm_logp: torch.Tensor) -> torch.Tensor:
        idx = row_index(micro, prm_logp)
        if record_BR is not None:
            record_BR.index_copy_(0, idx, prm_logp.detach())
        if weights is not None:
            q = torch.where(mask.index_select(0, idx), prm_logp - ref_BR.index_select(0, idx), 0.0)
            return balanced_ce_sum(beta * q.sum(-1), batch.outcome.index_select(0, idx), weights)
        loss = prm_ce_loss(prm_logp, ref_BR.index_select(0, idx), mask.index_select(0, idx),
                           batch.outcome.index_select(0, idx), beta=beta)
        return loss * (len(micro) / n_rows)

    return MicroLoss(batch, share)


def fused_micro_loss(models: PrimeModels, batch: TrainBatch, config: Config, minibatch_rows: list[int],
                     record: HeadRecord) -> MicroLoss:
    """prm_micro_loss on the fused head: the micro-batch's forward is both trunks and one head call
    (prm_head.fused_head_scores), its share the CE on the head's per-response sums R_b; writes the head's
    results into `record`."""
    beta, n_rows = config.prime.beta, len(minibatch_rows)
    weights = _balanced_weights(batch, config, minibatch_rows)

    def forward(prm: torch.nn.Module, micro: list[int]) -> HeadScores:
        return fused_head_scores(prm, models.ref, batch, micro, beta=beta)

    def share(micro: list[int], scores: HeadScores) -> torch.Tensor:
        record.add(micro, scores)
        outcome_b = batch.outcome.index_select(0, row_index(micro, scores.reward_sum_b))
        if weights is not None:
            return balanced_ce_sum(scores.reward_sum_b, outcome_b, weights)
        return prm_ce_terms(scores.reward_sum_b, outcome_b).sum() / n_rows

    return MicroLoss(batch, share, forward=forward)


def _update(models: PrimeModels, config: Config, minibatches: MiniBatches,
            micro_loss: Callable[[list[int]], MicroLoss]) -> list[torch.Tensor]:
    """One pass of PRM optimizer steps over the batch, one per mini-batch, with `micro_loss(mini-batch rows)`'s
    shares; returns the mini-batches' losses (on the device)."""
    return [minibatch_step(models.prm, models.prm_optim, plan, micro_loss(rows)).loss
            for rows, plan in minibatches]


def _finish_update(models: PrimeModels, batch: TrainBatch, config: Config, minibatches: MiniBatches,
                   ref_BR: torch.Tensor) -> None:
    """The passes after the first (prm.epochs > 1), the PRM alone against the first pass's reference
    log-probs (the reference does not change, so scoring it again would only cost), then the PRM's
    learning-rate schedule steps once per RL step."""
    for _ in range(config.prm.epochs - 1):
        _update(models, config, minibatches, lambda rows: prm_micro_loss(batch, ref_BR, config, rows))
    models.prm_sched.step()


def token_rewards(prm_BR: torch.Tensor, ref_BR: torch.Tensor, mask_BR: torch.Tensor, *, beta: float,
                  granularity: str) -> torch.Tensor:
    """fp32 [B, R]: beta * log-ratio on every valid token (`token`), or its sum on the last valid token
    (`whole`). Both inputs are fp32 log-probs accumulated in fp32, so the difference is exact to fp32."""
    q_BR = torch.where(mask_BR, prm_BR - ref_BR, 0.0)
    return place_rewards(beta * q_BR, beta * q_BR.sum(-1), mask_BR, granularity=granularity)


def place_rewards(reward_BR: torch.Tensor, total_B: torch.Tensor, mask_BR: torch.Tensor, *,
                  granularity: str) -> torch.Tensor:
    """The token rewards as prime.granularity places them: `reward_BR` itself (`token`), or each row's
    `total_B` on its last valid token (`whole`)."""
    if granularity == "token":
        return reward_BR
    last_B = mask_BR.sum(-1).clamp(min=1) - 1
    whole = torch.zeros_like(reward_BR)
    whole.scatter_(1, last_B.unsqueeze(1), total_B.unsqueeze(1))
    return torch.where(mask_BR, whole, 0.0)


def _fused_stage(models: PrimeModels, batch: TrainBatch, config: Config, minibatches: MiniBatches,
                 scoring_plan: list[list[int]]) -> PRMScores:
    """prm_stage on the fused head (module docstring). `after`: the update's forwards give everything;
    `none`: one scoring pass; `before`: the update's forwards give the reference, then the updated PRM is
    scored alone and the log-ratio taken in torch (as the two-head path does)."""
    mode, beta, mask = config.prm.update, config.prime.beta, batch.response_mask
    record = HeadRecord(batch)
    losses: list[torch.Tensor] = []
    with evaluating(models.ref):
        if mode == "none":
            score_with_head(models, batch, scoring_plan, record, beta=beta)
        else:
            losses = _update(models, config, minibatches,
                             lambda rows: fused_micro_loss(models, batch, config, rows, record))
    prm_BR, ref_BR, reward_BR, reward_sum_B = record.combined()
    if mode != "none":
        _finish_update(models, batch, config, minibatches, ref_BR)
    if mode == "before":
        prm_BR = batch_logprobs(models.prm, batch, budget=config.train.micro_batch_tokens, plan=scoring_plan)
        rewards = token_rewards(prm_BR, ref_BR, mask, beta=beta, granularity=config.prime.granularity)
    else:
        rewards = place_rewards(reward_BR, reward_sum_B, mask, granularity=config.prime.granularity)
    monitor = None
    if not losses:
        monitor = prm_ce_terms(reward_sum_B, batch.outcome).mean()
    return _scores(batch, ref_BR, prm_BR, rewards, losses, monitor)


def _scores(batch: TrainBatch, ref_BR: torch.Tensor, prm_BR: torch.Tensor, rewards: torch.Tensor,
            losses: list[torch.Tensor], monitor: torch.Tensor | None) -> PRMScores:
    """PRMScores with the metrics, on the device: prm_loss (the update's mean training loss over PRM
    mini-batches; `none` reports the CE of the scores, `monitor`), prm_acc, and the reward scale by class
    (reward_scale)."""
    metrics = DeviceMetrics()
    with torch.no_grad():
        metrics.put("prm_loss", torch.stack(losses).mean() if losses else monitor)
        metrics.put("prm_acc", prm_pairwise_accuracy(rewards, batch.response_mask, batch.outcome,
                                                     group_size=batch.group_size))
        reward_scale(metrics, rewards, batch.outcome)
    return PRMScores(ref_BR, prm_BR, rewards, metrics)


def reward_scale(metrics: DeviceMetrics, rewards_BR: torch.Tensor, outcome_B: torch.Tensor) -> None:
    """prm/reward_correct, prm/reward_wrong: the mean total implicit reward R_b = sum_t r_t of correct and of
    wrong responses, soft labels weighing a response into both classes (a key is left out when its class
    has no weight). Their gap is what the PRM tells apart, their common drift how far it has moved from
    the reference on what the policy samples now (bench/README, issue 18)."""
    R_B, o_B = rewards_BR.double().sum(-1), outcome_B.double()
    metrics.put_ratio("prm/reward_correct", (R_B * o_B).sum(), o_B.sum())
    metrics.put_ratio("prm/reward_wrong", (R_B * (1 - o_B)).sum(), (1 - o_B).sum())


def prm_stage(models: PrimeModels, batch: TrainBatch, config: Config, *, old_logp: torch.Tensor) -> PRMScores:
    """Scores the reference and the PRM and updates the PRM (prm.update: before / after the scoring, or
    none; prm.epochs passes); the metrics are prm_loss, prm_acc and the reward scale by class."""
    minibatches = prm_minibatches(batch, config)
    scoring_plan = prm_scoring_plan(batch, config, minibatches)  # the reference is scored on the same one
    if fused_head_supported(models, config):
        return _fused_stage(models, batch, config, minibatches, scoring_plan)
    ref_BR = reference_logprobs(models, batch, config, scoring_plan, old_logp)
    budget, mode = config.train.micro_batch_tokens, config.prm.update
    losses: list[torch.Tensor] = []
    if mode == "after":
        record = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.device)
        losses = _update(models, config, minibatches,
                         lambda rows: prm_micro_loss(batch, ref_BR, config, rows, record))
        _finish_update(models, batch, config, minibatches, ref_BR)
        prm_BR = all_rows_sum(record)
    else:
        if mode == "before":
            losses = _update(models, config, minibatches,
                             lambda rows: prm_micro_loss(batch, ref_BR, config, rows, None))
            _finish_update(models, batch, config, minibatches, ref_BR)
        prm_BR = batch_logprobs(models.prm, batch, budget=budget, plan=scoring_plan)
    rewards = token_rewards(prm_BR, ref_BR, batch.response_mask, beta=config.prime.beta,
                            granularity=config.prime.granularity)
    monitor = None
    if not losses:
        with torch.no_grad():
            monitor = prm_ce_loss(prm_BR, ref_BR, batch.response_mask, batch.outcome, beta=config.prime.beta)
    return _scores(batch, ref_BR, prm_BR, rewards, losses, monitor)
