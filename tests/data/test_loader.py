"""PromptLoader: seeded epoch permutations, fixed fetch size, drop_last, the refill buffer served first,
and state_dict round trips that reproduce the exact subsequent prompt sequence."""

from __future__ import annotations

import json
import random

import pytest
from primeflow.trainer.data import PromptLoader, PromptRecord, arithmetic_task


def _records(n: int) -> list[PromptRecord]:
    return arithmetic_task(n, seed=0)


def _drain_epoch(loader: PromptLoader) -> list[list[str]]:
    out = []
    while (batch := loader.fetch()) is not None:
        out.append([r.uid for r in batch])
    return out


def test_epochs_are_permutations_fixed_size_and_seeded(seed):
    rng = random.Random(seed)
    n, bs = rng.randint(10, 60), rng.randint(1, 9)
    recs = _records(n)
    loader = PromptLoader(recs, batch_size=bs, seed=seed)
    epochs = []
    for e in range(3):
        assert loader.epoch == e and loader.position == 0
        batches = _drain_epoch(loader)
        assert len(batches) == n // bs == loader.batches_per_epoch()
        assert all(len(b) == bs for b in batches)
        flat = [u for b in batches for u in b]
        assert len(set(flat)) == len(flat) == (n // bs) * bs  # no repeats; the tail is dropped
        epochs.append(flat)
    assert loader.epoch == 3
    assert epochs[0] != epochs[1] or n < 3  # a new permutation each epoch
    again = PromptLoader(recs, batch_size=bs, seed=seed)
    assert [u for b in _drain_epoch(again) for u in b] == epochs[0]
    other = PromptLoader(recs, batch_size=bs, seed=seed + 1)
    assert [u for b in _drain_epoch(other) for u in b] != epochs[0] or n < 3


def test_no_shuffle_and_keep_last():
    recs = _records(7)
    loader = PromptLoader(recs, batch_size=3, seed=0, shuffle=False, drop_last=False)
    assert _drain_epoch(loader) == [[r.uid for r in recs[i:i + 3]] for i in (0, 3, 6)]
    assert loader.batches_per_epoch() == 3


def test_buffer_comes_first_capped_and_survives_epoch_end():
    recs = _records(12)
    loader = PromptLoader(recs, batch_size=4, seed=3, max_from_buffer=2)
    first = loader.fetch()
    loader.requeue(first[1:4])  # three prompts back, in this order
    assert [r.uid for r in loader.buffer] == [r.uid for r in first[1:4]]
    second = loader.fetch()
    assert len(second) == 2 + 4 and second[:2] == first[1:3]  # capped at max_from_buffer, then fresh
    third = loader.fetch(from_buffer=False)
    assert len(third) == 4 and loader.buffer == [first[3]]
    fresh = [r.uid for r in first + second[2:] + third]
    assert sorted(fresh) == sorted(r.uid for r in recs)  # 3 fresh batches cover the 12 prompts once
    assert loader.fetch() is None and loader.epoch == 1  # the epoch end does not touch the buffer
    assert loader.buffer == [first[3]]
    nxt = loader.fetch()
    assert nxt[0] == first[3] and len(nxt) == 5 and loader.buffer == []


def test_requeue_rejects_foreign_prompts():
    loader = PromptLoader(_records(5), batch_size=2, seed=0)
    with pytest.raises(ValueError, match="'arith:9:0' is not a prompt of this loader's dataset"):
        loader.requeue(arithmetic_task(1, seed=9))


def _run(loader: PromptLoader, rng: random.Random, n_fetches: int) -> list[list[str]]:
    """Fetch n times, randomly requeueing some fetched prompts (as the assembler does)."""
    seq = []
    for _ in range(n_fetches):
        batch = loader.fetch(from_buffer=rng.random() < 0.8)
        if batch is None:
            seq.append(["<epoch end>"])
            continue
        seq.append([r.uid for r in batch])
        loader.requeue([r for r in batch if rng.random() < 0.3])
    return seq


def test_state_roundtrip_reproduces_the_sequence(seed, tmp_path):
    rng = random.Random(seed)
    recs = _records(rng.randint(8, 40))
    kwargs = dict(batch_size=rng.randint(1, 7), seed=rng.randrange(1000), max_from_buffer=rng.choice([None, 1, 3]))
    a = PromptLoader(recs, **kwargs)
    _run(a, random.Random(seed + 1), rng.randint(0, 30))  # somewhere mid-epoch, with a buffer
    state = a.state_dict()
    path = tmp_path / "loader.json"
    path.write_text(json.dumps(state))  # plain JSON: the checkpoint can store it as is
    tail_a = _run(a, random.Random(seed + 2), 40)

    b = PromptLoader(recs, **kwargs)
    _run(b, random.Random(seed + 3), rng.randint(0, 10))  # a different history, then restored
    b.load_state_dict(json.loads(path.read_text()))
    assert b.state_dict() == state
    tail_b = _run(b, random.Random(seed + 2), 40)
    assert tail_a == tail_b


def test_state_mismatches_are_errors():
    recs = _records(10)
    state = PromptLoader(recs, batch_size=2, seed=0).state_dict()
    with pytest.raises(ValueError, match="saved for a different dataset"):
        PromptLoader(recs[::-1], batch_size=2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="state has batch_size=2 but this loader has batch_size=3"):
        PromptLoader(recs, batch_size=3, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="version 1"):
        PromptLoader(recs, batch_size=2, seed=0).load_state_dict({"version": 99})
    bad = dict(state, buffer=["nope"])
    with pytest.raises(ValueError, match="buffer holds uids not in the dataset"):
        PromptLoader(recs, batch_size=2, seed=0).load_state_dict(bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(batch_size=11), "fewer than batch_size=11"),
    (dict(batch_size=2, max_from_buffer=-1), "max_from_buffer must be None or an int >= 0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PromptLoader(_records(10), seed=0, **kwargs)
    with pytest.raises(ValueError, match="duplicate uid"):
        PromptLoader(_records(3) + _records(1), batch_size=1, seed=0)
