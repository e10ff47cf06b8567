"""PRIME's batch assembly with the accuracy filter and the refill buffer (prime_spec.md 6.3, 10.2 step 2-3).

One call to ``assemble_step`` builds one training step's batch:

1. fetch prompts from the loader (the first fetch of the step starts with the refill buffer);
2. hand them to the trainer's ``generate_and_score`` callback, which samples K responses per prompt with
   the current policy, verifies them and returns a ``GroupResults`` (scores, plus any per-prompt payload
   such as the responses and their log-probs: this module never looks inside it);
3. keep the groups that pass the filter (``filter_groups``; optionally also the truncation filter);
4. repeat until at least ``prompts_per_step`` groups passed; keep the first ``prompts_per_step`` (in
   generation order) and requeue the prompts of the surplus groups (prompts only, never their responses:
   they are regenerated from scratch by the next step's policy, so a batch never mixes policy versions);
5. if the epoch's data runs out first, the partial batch is discarded and ``epoch_ended`` is set
   (``records`` empty); the loader has already moved to the next epoch.

All fetches of one call happen with the same policy (no update in between), so PRIME stays on-policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .filtering import _flat_scores, filter_groups
from .loader import PromptLoader
from .records import PromptRecord


@dataclass
class GroupResults:
    """What ``generate_and_score`` returns for the P prompts it was given.

    scores: the P*K verifier scores, each prompt's K responses contiguous, in prompt order (a list, a [P*K]
        tensor or a [P, K] tensor).
    payload: optional, one object per prompt (e.g. that group's token ids / log-probs); passed through.
    truncated: optional, P*K bools (response hit the length limit), used only with ``filter_truncated``.
    """

    scores: Sequence[float] | torch.Tensor
    payload: Sequence[Any] | None = None
    truncated: Sequence[bool] | torch.Tensor | None = None


GenerateAndScore = Callable[[list[PromptRecord]], GroupResults]


class FilterStarvationError(RuntimeError):
    """``max_fetches`` fetches did not produce enough groups that pass the filter."""


@dataclass
class AssembledBatch:
    """One step's batch and its bookkeeping.

    records / scores / payload / origin: one entry per kept group, exactly ``prompts_per_step`` of them
        (none if ``epoch_ended``); origin is (fetch number in this step, index within that fetch).
    n_generated_groups: groups generated this step (all fetches); n_passed_groups: those that passed the
        filter (before the trim); n_requeued: surplus prompts put back into the loader's buffer;
        n_discarded: passed groups thrown away because the epoch ended.
    outcome_acc: mean verifier score over every generated response, before filtering (architecture.md's
        ``outcome_acc``); kept_frac: n_passed / n_generated (``filter_kept_frac``).
    """

    records: list[PromptRecord]
    scores: list[list[float]]
    payload: list[Any]
    origin: list[tuple[int, int]]
    epoch_ended: bool
    n_fetches: int
    n_generated_groups: int
    n_passed_groups: int
    n_requeued: int
    n_discarded: int
    outcome_acc: float
    epoch: int = 0
    fetch_sizes: list[int] = field(default_factory=list)
    starved: bool = False  # max_fetches was reached (with on_starved) before the batch filled

    @property
    def kept_frac(self) -> float:
        return self.n_passed_groups / self.n_generated_groups if self.n_generated_groups else math.nan

    def metrics(self) -> dict[str, float]:
        """The step metrics this stage contributes (names as in architecture.md where it defines them)."""
        return {
            "outcome_acc": self.outcome_acc,
            "filter_kept_frac": self.kept_frac,
            "data/fetches": float(self.n_fetches),
            "data/generated_groups": float(self.n_generated_groups),
            "data/passed_groups": float(self.n_passed_groups),
            "data/requeued": float(self.n_requeued),
            "data/epoch": float(self.epoch),
            "data/filter_starved": float(self.starved),
        }


def _check_results(res: Any, n_prompts: int, group_size: int) -> tuple[list[float], list[Any], list[bool] | None]:
    if not isinstance(res, GroupResults):
        raise TypeError(f"generate_and_score must return a GroupResults, got {type(res).__name__}")
    n_scores = res.scores.numel() if isinstance(res.scores, torch.Tensor) else len(res.scores)
    if n_scores != n_prompts * group_size:
        raise ValueError(f"generate_and_score returned {n_scores} scores for {n_prompts} prompts; expected "
                         f"{n_prompts} x group_size {group_size} = {n_prompts * group_size}")
    flat = _flat_scores(res.scores, group_size)
    payload = list(res.payload) if res.payload is not None else [None] * n_prompts
    if len(payload) != n_prompts:
        raise ValueError(f"generate_and_score returned {len(payload)} payload items for {n_prompts} prompts")
    truncated = None
    if res.truncated is not None:
        t = res.truncated.reshape(-1).tolist() if isinstance(res.truncated, torch.Tensor) else list(res.truncated)
        if len(t) != len(flat):
            raise ValueError(f"generate_and_score returned {len(t)} truncated flags for {len(flat)} responses")
        truncated = [bool(x) for x in t]
    return flat, payload, truncated


def assemble_step(loader: PromptLoader, generate_and_score: GenerateAndScore, *, prompts_per_step: int,
                  group_size: int, low: float = 0.2, high: float = 0.8, filter_accuracy: bool = True,
                  filter_truncated: bool = False, max_fetches: int | None = None,
                  on_starved: Callable[[str], None] | None = None) -> AssembledBatch:
    """Fetch, generate, filter and refill until ``prompts_per_step`` groups pass (see the module docstring).

    filter_accuracy=False keeps every group (plain RLOO batches / no filter). filter_truncated drops a group
    if any response was truncated (needs ``GroupResults.truncated``). max_fetches: after that many fetches
    without a full batch, raise FilterStarvationError, or, with `on_starved`, call it once with the same
    message and keep fetching until the batch is full or the epoch ends (PRIME's behaviour; the trainer's).
    None: no limit.
    """
    if not isinstance(prompts_per_step, int) or prompts_per_step < 1:
        raise ValueError(f"prompts_per_step must be an int >= 1, got {prompts_per_step!r}")
    if max_fetches is not None and (not isinstance(max_fetches, int) or max_fetches < 1):
        raise ValueError(f"max_fetches must be None or an int >= 1, got {max_fetches!r}")
    kept: list[tuple[PromptRecord, list[float], Any, tuple[int, int]]] = []
    n_generated = 0
    score_sum = 0.0
    fetch_sizes: list[int] = []
    starved = False
    while len(kept) < prompts_per_step:
        if max_fetches is not None and len(fetch_sizes) >= max_fetches and not starved:
            message = (f"after {len(fetch_sizes)} fetches ({n_generated} groups, mean score "
                       f"{score_sum / max(1, n_generated * group_size):.3f}) only {len(kept)} of {prompts_per_step} "
                       f"groups passed the filter [{low}, {high}]: the task is too easy or too hard for the policy "
                       "(raise max_fetches, change the data, or widen the bounds)")
            if on_starved is None:
                raise FilterStarvationError(message)
            on_starved(message + "; still fetching until the batch is full or the epoch ends")
            starved = True
        prompts = loader.fetch(from_buffer=not fetch_sizes)
        if prompts is None:
            return AssembledBatch(records=[], scores=[], payload=[], origin=[], epoch_ended=True,
                                  n_fetches=len(fetch_sizes), n_generated_groups=n_generated,
                                  n_passed_groups=len(kept), n_requeued=0, n_discarded=len(kept),
                                  outcome_acc=score_sum / (n_generated * group_size) if n_generated else math.nan,
                                  epoch=loader.epoch - 1, fetch_sizes=fetch_sizes, starved=starved)
        fetch_no = len(fetch_sizes)
        fetch_sizes.append(len(prompts))
        flat, payload, truncated = _check_results(generate_and_score(prompts), len(prompts), group_size)
        if filter_truncated and truncated is None:
            raise ValueError("filter_truncated=True needs GroupResults.truncated from generate_and_score")
        n_generated += len(prompts)
        score_sum += math.fsum(flat)
        passed = filter_groups(flat, group_size, low=low, high=high) if filter_accuracy else [True] * len(prompts)
        for j, rec in enumerate(prompts):
            if not passed[j]:
                continue
            if filter_truncated and any(truncated[j * group_size:(j + 1) * group_size]):
                continue
            kept.append((rec, flat[j * group_size:(j + 1) * group_size], payload[j], (fetch_no, j)))
    surplus = kept[prompts_per_step:]
    kept = kept[:prompts_per_step]
    loader.requeue([rec for rec, *_ in surplus])
    return AssembledBatch(
        records=[k[0] for k in kept], scores=[k[1] for k in kept], payload=[k[2] for k in kept],
        origin=[k[3] for k in kept], epoch_ended=False, n_fetches=len(fetch_sizes),
        n_generated_groups=n_generated, n_passed_groups=len(kept) + len(surplus), n_requeued=len(surplus),
        n_discarded=0, outcome_acc=score_sum / (n_generated * group_size), epoch=loader.epoch,
        fetch_sizes=fetch_sizes, starved=starved)
