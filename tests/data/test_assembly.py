"""PRIME's batch assembly (prime_spec.md 6.3) against an independent replay of the spec.

The trainer's generate+verify callback is stood in for by a seeded scorer (no model is needed to test the
bookkeeping): each generated group gets a random pattern (all right, all wrong, or mixed; 0/1 or code-like
j/10 scores). Every call is logged, and each step is re-derived from the log with exact Fractions:
the batch is the first `prompts_per_step` passing groups in generation order, the surplus prompts are
requeued in order behind whatever the buffer still held, the next step's first fetch starts with them, and
over a whole epoch every prompt is generated fresh exactly once, nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction

import pytest
import torch
from primeflow.trainer.data import (
    AssembledBatch,
    FilterStarvationError,
    GroupResults,
    PromptLoader,
    arithmetic_task,
    assemble_step,
)


class Scorer:
    """Seeded stand-in for generate+verify; logs every call as [(uid, [Fraction scores])]."""

    def __init__(self, seed: int, k: int, *, p_easy=0.25, p_hard=0.25, as_tensor=False):
        self.seed, self.k, self.p_easy, self.p_hard, self.as_tensor = seed, k, p_easy, p_hard, as_tensor
        self.calls: list[list[tuple[str, list[Fraction]]]] = []
        self.step = 0

    def group(self, rng: random.Random) -> list[Fraction]:
        u = rng.random()
        if u < self.p_easy:
            return [Fraction(1)] * self.k
        if u < self.p_easy + self.p_hard:
            return [Fraction(0)] * self.k
        if rng.random() < 0.5:
            return [Fraction(rng.randint(0, 1)) for _ in range(self.k)]
        return [Fraction(rng.randint(0, 10), 10) for _ in range(self.k)]

    def __call__(self, prompts):
        fetch_no = sum(1 for c in self.calls if c and c[0][0] == ("step", self.step))
        logged = []
        for j, rec in enumerate(prompts):
            rng = random.Random(f"{self.seed}:{self.step}:{fetch_no}:{j}:{rec.uid}")
            logged.append((rec.uid, self.group(rng)))
        self.calls.append([(("step", self.step), None), *logged])
        flat = [float(s) for _, g in logged for s in g]
        scores = torch.tensor(flat, dtype=torch.float32) if self.as_tensor else flat
        return GroupResults(scores=scores, payload=[(uid, "payload") for uid, _ in logged])

    def step_calls(self, step: int) -> list[list[tuple[str, list[Fraction]]]]:
        return [c[1:] for c in self.calls if c[0][0] == ("step", step)]


def _passes(g: list[Fraction], low=Fraction(1, 5), high=Fraction(4, 5)) -> bool:
    return low <= sum(g) / len(g) <= high


def _check_step(batch: AssembledBatch, calls, buffer_before: list[str], buffer_after: list[str], *,
                pps: int, k: int, max_from_buffer: int, filtered=True):
    """Re-derive the step from the logged calls (the spec, independently of assemble_step)."""
    take = min(len(buffer_before), max_from_buffer)
    if calls:
        assert [u for u, _ in calls[0][:take]] == buffer_before[:take], "buffered prompts come first"
    else:
        assert batch.epoch_ended, "no fetch happened, so the epoch must have ended"
    groups = [(u, g, (f, j)) for f, call in enumerate(calls) for j, (u, g) in enumerate(call)]
    passing = [x for x in groups if not filtered or _passes(x[1])]
    all_scores = [s for _, g, _ in groups for s in g]
    assert batch.n_fetches == len(calls) and batch.n_generated_groups == len(groups)
    if all_scores:  # 1e-7: the scores may arrive as float32 (j/10 is not exact there, error <= 3e-8)
        assert batch.outcome_acc == pytest.approx(float(sum(all_scores) / len(all_scores)), abs=1e-7)
    else:
        assert math.isnan(batch.outcome_acc) and math.isnan(batch.kept_frac)
    assert batch.n_passed_groups == len(passing)
    if batch.epoch_ended:
        assert batch.records == [] and batch.n_discarded == len(passing) < pps
        # the buffered prompts regenerated this step belong to the discarded partial batch (spec 6.3 step 5);
        # the rest of the buffer is untouched and carries over to the next epoch
        assert buffer_after == (buffer_before[take:] if calls else buffer_before)
        return []
    # the step stopped at the first fetch that completed the batch
    before_last = [x for x in passing if x[2][0] < len(calls) - 1]
    assert len(before_last) < pps <= len(passing)
    kept, surplus = passing[:pps], passing[pps:]
    assert [r.uid for r in batch.records] == [u for u, _, _ in kept]
    assert [len(g) for g in batch.scores] == [k] * len(kept)
    assert [x for g in batch.scores for x in g] == pytest.approx(  # 1e-7: float32 scores, as above
        [float(x) for _, g, _ in kept for x in g], abs=1e-7)
    assert batch.origin == [o for _, _, o in kept]
    assert batch.payload == [(u, "payload") for u, _, _ in kept]
    assert batch.n_requeued == len(surplus)
    assert buffer_after == buffer_before[take:] + [u for u, _, _ in surplus], "surplus requeued in order"
    return [u for u, _, _ in surplus]


def _one_epoch(seed: int, *, filtered=True, as_tensor=False):
    rng = random.Random(seed)
    k = rng.choice([2, 4, 5, 8])
    n = rng.randint(30, 120)
    pps = rng.randint(1, 10)
    bs = rng.randint(1, 12)
    mfb = rng.choice([None, 1, 5])
    recs = arithmetic_task(n, seed=seed % 1000)
    loader = PromptLoader(recs, batch_size=bs, seed=seed, max_from_buffer=mfb)
    scorer = Scorer(seed, k, p_easy=rng.random() * 0.5, p_hard=rng.random() * 0.4, as_tensor=as_tensor)
    steps, pending = [], []
    fresh_seen: Counter = Counter()
    while True:
        before = [r.uid for r in loader.buffer]
        assert before == pending
        batch = assemble_step(loader, scorer, prompts_per_step=pps, group_size=k, filter_accuracy=filtered)
        calls = scorer.step_calls(scorer.step)
        after = [r.uid for r in loader.buffer]
        take = min(len(before), loader.max_from_buffer) if calls else 0
        for f, call in enumerate(calls):
            fresh = call[take:] if f == 0 else call
            fresh_seen.update(u for u, _ in fresh)
        requeued = _check_step(batch, calls, before, after, pps=pps, k=k, max_from_buffer=loader.max_from_buffer,
                               filtered=filtered)
        pending = after
        steps.append((batch, calls, requeued))
        scorer.step += 1
        if batch.epoch_ended:
            break
    return recs, loader, steps, fresh_seen, pps


def test_refill_exactness_over_whole_epochs(seed):
    for trial in range(25):
        s = seed * 100 + trial
        recs, loader, steps, fresh_seen, pps = _one_epoch(s, as_tensor=trial % 2 == 1)
        bs = loader.batch_size
        # every prompt of the epoch's served batches was generated fresh exactly once
        assert sum(fresh_seen.values()) == (len(recs) // bs) * bs
        assert max(fresh_seen.values()) == 1
        # conservation: generations of a uid = 1 fresh + each time it came back from the buffer; every
        # requeue is either served later or still in the buffer at the end
        generated = Counter(u for _, calls, _ in steps for call in calls for u, _ in call)
        requeued = Counter(u for *_, req in steps for u in req)
        final_buffer = Counter(r.uid for r in loader.buffer)
        assert max(final_buffer.values(), default=0) <= 1, "a prompt is never in the buffer twice"
        for uid, n_gen in generated.items():
            served_from_buffer = n_gen - fresh_seen[uid]
            assert requeued[uid] == served_from_buffer + final_buffer[uid], uid
        # a prompt is trained on at most once per epoch, and every complete step has exactly pps groups
        kept = Counter(r.uid for b, _, _ in steps for r in b.records)
        assert max(kept.values(), default=0) <= 1
        assert all(len(b.records) == pps for b, _, _ in steps[:-1]) and steps[-1][0].epoch_ended
        # each generated group ends in exactly one place
        for b, calls, req in steps:
            n_groups = sum(len(c) for c in calls)
            n_failed = sum(1 for c in calls for _, g in c if not _passes(g))
            assert n_groups == len(b.records) + len(req) + n_failed + b.n_discarded


def test_no_filter_keeps_everything_in_order(seed):
    recs, loader, steps, fresh_seen, pps = _one_epoch(seed, filtered=False)
    for b, _, _ in steps[:-1]:
        assert b.n_passed_groups == b.n_generated_groups and b.kept_frac == 1.0
    assert max(fresh_seen.values()) == 1


def test_resume_mid_run_gives_identical_batches(seed):
    recs = arithmetic_task(60, seed=1)
    kwargs = dict(prompts_per_step=3, group_size=4)

    def run(loader, scorer, steps):
        out = []
        for _ in range(steps):
            b = assemble_step(loader, scorer, **kwargs)
            out.append(([r.uid for r in b.records], b.scores, b.epoch_ended, [r.uid for r in loader.buffer]))
            scorer.step += 1
        return out

    a, sa = PromptLoader(recs, batch_size=4, seed=seed), Scorer(seed, 4)
    run(a, sa, 5)
    state, step = a.state_dict(), sa.step
    tail_a = run(a, sa, 12)
    b, sb = PromptLoader(recs, batch_size=4, seed=seed), Scorer(seed, 4)
    b.load_state_dict(state)
    sb.step = step
    assert run(b, sb, 12) == tail_a


def test_max_fetches_starvation_and_requeue(seed):
    recs = arithmetic_task(50, seed=2)
    loader = PromptLoader(recs, batch_size=5, seed=seed)
    too_easy = Scorer(seed, 4, p_easy=1.0, p_hard=0.0)
    with pytest.raises(FilterStarvationError, match=r"after 3 fetches \(15 groups, mean score 1\.000\) only 0 of 2 "
                                                    r"groups passed the filter \[0\.2, 0\.8\]"):
        assemble_step(loader, too_easy, prompts_per_step=2, group_size=4, max_fetches=3)
    b = assemble_step(PromptLoader(recs, batch_size=5, seed=seed), Scorer(seed, 4, p_easy=0, p_hard=0),
                      prompts_per_step=2, group_size=4, filter_accuracy=False)
    assert len(b.records) == 2 and b.n_requeued == 3 and b.n_generated_groups == 5
    m = b.metrics()
    assert m["filter_kept_frac"] == 1.0 and m["data/requeued"] == 3.0 and 0 <= m["outcome_acc"] <= 1


def test_truncation_filter():
    recs = arithmetic_task(8, seed=3)
    loader = PromptLoader(recs, batch_size=4, seed=0, shuffle=False)

    def gen(prompts):
        # every group mixed (passes the accuracy filter); groups 0 and 2 have a truncated response
        trunc = [j in (0, 2) and i == 1 for j in range(len(prompts)) for i in range(2)]
        return GroupResults(scores=[1.0, 0.0] * len(prompts), truncated=trunc)

    b = assemble_step(loader, gen, prompts_per_step=3, group_size=2, filter_truncated=True)
    assert [r.uid for r in b.records] == [recs[i].uid for i in (1, 3, 5)]
    assert [r.uid for r in loader.buffer] == [recs[7].uid]
    with pytest.raises(ValueError, match="filter_truncated=True needs GroupResults.truncated"):
        assemble_step(PromptLoader(recs, batch_size=4, seed=0), lambda p: GroupResults(scores=[1.0, 0.0] * len(p)),
                      prompts_per_step=1,
                      group_size=2, filter_truncated=True)


@pytest.mark.parametrize("result,match", [
    ([1.0, 0.0], "must return a GroupResults, got list"),
    (GroupResults(scores=[1.0, 0.0, 1.0]), "returned 3 scores for 2 prompts; expected 2 x group_size 2 = 4"),
    (GroupResults(scores=[1.0, 0.0] * 2, payload=[1]), "returned 1 payload items for 2 prompts"),
    (GroupResults(scores=[1.0, 0.0] * 2, truncated=[True]), "returned 1 truncated flags for 4 responses"),
])
def test_bad_callback_results(result, match):
    loader = PromptLoader(arithmetic_task(4, seed=0), batch_size=2, seed=0)
    with pytest.raises((TypeError, ValueError), match=match):
        assemble_step(loader, lambda p: result, prompts_per_step=1, group_size=2)


def test_starvation_warns_once_and_keeps_fetching_until_the_epoch_ends(seed):
    """PRIME keeps fetching past a hard batch: with on_starved the step warns once at max_fetches, goes on,
    and either fills its batch or reports the epoch's end with the groups it had (not a crash)."""
    recs = arithmetic_task(50, seed=2)
    warnings: list[str] = []
    loader = PromptLoader(recs, batch_size=5, seed=seed)
    b = assemble_step(loader, Scorer(seed, 4, p_easy=1.0, p_hard=0.0), prompts_per_step=2, group_size=4,
                      max_fetches=3, on_starved=warnings.append)
    assert b.epoch_ended and b.starved and b.n_fetches == 10 and b.n_passed_groups == 0
    assert len(warnings) == 1 and "after 3 fetches" in warnings[0] and "still fetching" in warnings[0]
    assert b.metrics()["data/filter_starved"] == 1.0
    # a batch that fills after the threshold: kept, flagged, one warning
    calls = iter(range(100))

    def late(prompts):  # all too easy for 3 fetches, then every group mixed
        k = next(calls)
        scores = [1.0] * (4 * len(prompts)) if k < 3 else [float(i % 2) for i in range(4 * len(prompts))]
        return GroupResults(scores=scores)

    warnings.clear()
    b = assemble_step(PromptLoader(recs, batch_size=5, seed=seed), late, prompts_per_step=2, group_size=4,
                      max_fetches=3, on_starved=warnings.append)
    assert not b.epoch_ended and len(b.records) == 2 and b.starved and b.n_fetches == 4 and len(warnings) == 1
