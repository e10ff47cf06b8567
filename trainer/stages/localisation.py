"""Error localisation of the implicit PRM (issue 18, item 3): does the PRM's dense reward point at the step
where a wrong response went wrong?

For each wrong response (verifier score < 1) of a task with step labels (the chain task) whose written
steps include a wrong one, the step-level implicit reward of step s is the sum of the token rewards
beta * (log pi_phi - log pi_ref) over the tokens that produced step s's text. The response is *localised*
when its lowest step reward falls on the first wrong step. Ties share the credit: with m steps tied for the
lowest, one of them the first wrong step, the response counts 1/m. That keeps the step-0 PRM (all rewards
exactly 0, every step tied) at exactly the chance rate instead of "always the first step".

The chance rate is what a PRM that ranks steps at random would score: 1 / (number of written steps),
averaged over the same responses. Logged every step as prm/localisation, prm/localisation_chance and
prm/localisation_n (how many responses the two averages are over; the rates are absent when it is 0).
Measurement only: nothing here feeds the training loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..batch import TrainBatch
from ..data.chain_steps import StepLabeller
from ..data.token_spans import token_char_spans
from ..rollout.types import RolloutGroup
from .results import Localisation, PRMScores


def step_rewards(token_rewards: Sequence[float], token_spans: Sequence[tuple[int, int]],
                 step_spans: Sequence[tuple[int, int]]) -> list[float]:
    """Sum of the rewards of the tokens whose character span overlaps each step's span (a token that
    straddles two steps counts in both; tokens between steps, the answer and EOS count in none)."""
    if len(token_rewards) < len(token_spans):
        raise ValueError(f"{len(token_spans)} token spans but only {len(token_rewards)} token rewards")
    out = []
    for s0, s1 in step_spans:
        out.append(sum(float(token_rewards[j]) for j, (a, b) in enumerate(token_spans) if max(a, s0) < min(b, s1)))
    return out


def localisation_credit(rewards: Sequence[float], first_wrong: int) -> float:
    """1/m when the first wrong step is one of the m steps with the lowest reward, else 0."""
    if not rewards:
        raise ValueError("a response with no steps cannot be localised")
    if not 0 <= first_wrong < len(rewards):
        raise ValueError(f"first wrong step {first_wrong} is not one of the {len(rewards)} steps")
    lowest = min(rewards)
    tied = [i for i, r in enumerate(rewards) if r == lowest]
    return 1.0 / len(tied) if first_wrong in tied else 0.0


def localisation(responses: Sequence[tuple[Sequence[float], int]]) -> Localisation:
    """Localisation rate and chance rate over (step rewards, first wrong step) of the wrong responses."""
    if not responses:
        return Localisation(localised=None, chance=None, n=0)
    credits = [localisation_credit(r, first) for r, first in responses]
    chance = [1.0 / len(r) for r, _ in responses]
    return Localisation(localised=sum(credits) / len(credits), chance=sum(chance) / len(chance), n=len(responses))


def process_rewards(scores: PRMScores, batch: TrainBatch, *, beta: float) -> torch.Tensor:
    """beta * log-ratio per valid token, from the log-probs (whatever prime.granularity put in the rewards)."""
    return torch.where(batch.response_mask, beta * (scores.prm_logp - scores.ref_logp), 0.0)


def localisation_stage(labeller: StepLabeller, groups: Sequence[RolloutGroup], scores: PRMScores,
                       batch: TrainBatch, tokenizer: Any, *, beta: float) -> Localisation:
    """Localisation over the batch's wrong responses. `groups` are the rollout groups in batch row order
    (the K responses of a group contiguous)."""
    rewards_BR = process_rewards(scores, batch, beta=beta).cpu().tolist()  # one device-to-host copy
    responses: list[tuple[list[float], int]] = []
    row = 0
    for group in groups:
        for ids, text, score in zip(group.response_ids, group.texts, group.scores, strict=True):
            i, row = row, row + 1
            if score >= 1.0:
                continue
            labels = labeller.label(group.uid, text)
            first = labels.first_wrong
            if first is None:  # unparsable, or every written step right: no step to point at
                continue
            spans = token_char_spans(tokenizer, ids, text)
            responses.append((step_rewards(rewards_BR[i], spans, [(s.start, s.end) for s in labels.steps]), first))
    if row != batch.rows:
        raise ValueError(f"the rollout groups hold {row} responses but the batch has {batch.rows} rows")
    return localisation(responses)
