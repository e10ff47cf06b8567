"""PromptLoader: seeded shuffled epochs of prompts, a fixed number per fetch, and PRIME's refill buffer.

Behaviour (prime_spec.md 6.3 / 10.2, following PRIME's BufferedDataLoader):
- Each epoch is a permutation of the dataset drawn from (seed, epoch) alone, so any epoch's order can be
  recomputed from the state without replaying earlier ones. ``shuffle=False`` keeps file order.
- ``fetch()`` returns the next ``batch_size`` prompts of the permutation. With ``drop_last=True`` (PRIME's
  DataLoader setting) a final partial batch is not served. At the end of the epoch ``fetch()`` returns
  ``None`` and the loader moves to the next epoch (position 0, new permutation).
- ``requeue(records)`` appends prompts to the refill buffer. ``fetch(from_buffer=True)`` puts up to
  ``max_from_buffer`` buffered prompts (default ``batch_size``, as PRIME's ``get_from_buffer``) in front of
  the fresh batch. The buffer survives epoch ends; buffered prompts are only handed out together with a
  fresh batch, so a fetch that finds the epoch exhausted leaves them buffered (PRIME's loop has already
  taken them out of its buffer at that point and loses them).
- ``state_dict()`` is plain JSON-able data (seed, epoch, position, buffer uids, a dataset fingerprint);
  ``load_state_dict`` restores it exactly, so a resumed run fetches the same prompt sequence.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from .records import PromptRecord

STATE_VERSION = 1


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of epoch ``epoch``: a function of (n, seed, epoch) only (string seeds hash with SHA-512 in
    ``random.Random``, independent of PYTHONHASHSEED and of earlier draws)."""
    order = list(range(n))
    random.Random(f"primeflow-loader:{seed}:{epoch}").shuffle(order)
    return order


def dataset_fingerprint(records: Sequence[PromptRecord]) -> str:
    """SHA-256 over the uids in order: a resumed loader must see the same prompts in the same order."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.uid.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


class PromptLoader:
    """Shuffled epochs of prompt records with a refill buffer (see the module docstring).

    records: the dataset (uids must be unique). batch_size: fresh prompts per fetch (PRIME:
    train_batch_size * oversample_factor). seed: the permutation seed. max_from_buffer: buffered prompts
    prepended per fetch (None = batch_size).
    """

    def __init__(self, records: Sequence[PromptRecord], *, batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True, max_from_buffer: int | None = None) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.records = list(records)
        if not self.records:
            raise ValueError("PromptLoader: the dataset is empty")
        if drop_last and len(self.records) < batch_size:
            raise ValueError(f"PromptLoader: the dataset has {len(self.records)} prompts, fewer than "
                             f"batch_size={batch_size}, so drop_last=True would never serve a batch")
        self._index: dict[str, int] = {}
        for i, r in enumerate(self.records):
            if not isinstance(r, PromptRecord):
                raise ValueError(f"records[{i}] is a {type(r).__name__}, not a PromptRecord")
            if r.uid in self._index:
                raise ValueError(f"PromptLoader: duplicate uid {r.uid!r} (records {self._index[r.uid]} and {i})")
            self._index[r.uid] = i
        if max_from_buffer is not None and (not isinstance(max_from_buffer, int) or max_from_buffer < 0):
            raise ValueError(f"max_from_buffer must be None or an int >= 0, got {max_from_buffer!r}")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.max_from_buffer = batch_size if max_from_buffer is None else max_from_buffer
        self.epoch = 0
        self.position = 0
        self._buffer: list[int] = []
        self._order = self._permutation(0)
        self._fingerprint = dataset_fingerprint(self.records)

    # -- epochs -------------------------------------------------------------------------------------------
    def _permutation(self, epoch: int) -> list[int]:
        n = len(self.records)
        return epoch_permutation(n, self.seed, epoch) if self.shuffle else list(range(n))

    def batches_per_epoch(self) -> int:
        """Fresh batches served per epoch."""
        n = len(self.records)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self._order = self._permutation(self.epoch)

    # -- fetching -----------------------------------------------------------------------------------------
    def fetch(self, *, from_buffer: bool = True) -> list[PromptRecord] | None:
        """The next prompts: up to ``max_from_buffer`` buffered ones (if ``from_buffer``), then the next
        fresh batch. Returns None at the end of the epoch (and moves to the next epoch)."""
        n = len(self.records)
        remaining = n - self.position
        if remaining <= 0 or (self.drop_last and remaining < self.batch_size):
            self._next_epoch()
            return None
        fresh = self._order[self.position:self.position + self.batch_size]
        self.position += len(fresh)
        take = min(len(self._buffer), self.max_from_buffer) if from_buffer else 0
        buffered, self._buffer = self._buffer[:take], self._buffer[take:]
        return [self.records[i] for i in (*buffered, *fresh)]

    def requeue(self, records: Sequence[PromptRecord]) -> None:
        """Append prompts (of this dataset) to the refill buffer, in order."""
        idx = []
        for r in records:
            uid = getattr(r, "uid", None)
            if uid not in self._index:
                raise ValueError(f"requeue: {uid!r} is not a prompt of this loader's dataset")
            idx.append(self._index[uid])
        self._buffer.extend(idx)

    @property
    def buffer(self) -> list[PromptRecord]:
        """The buffered prompts, in the order they will be served (a copy)."""
        return [self.records[i] for i in self._buffer]

    def __len__(self) -> int:
        return len(self.records)

    # -- checkpointing ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact prompt sequence (JSON-serialisable)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "max_from_buffer": self.max_from_buffer,
            "n_records": len(self.records),
            "fingerprint": self._fingerprint,
            "buffer": [self.records[i].uid for i in self._buffer],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the dataset and the batch settings must be the ones it was saved with."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"PromptLoader state must be a dict with version {STATE_VERSION}, got "
                             f"{state.get('version') if isinstance(state, dict) else type(state).__name__}")
        missing = [k for k in ("seed", "epoch", "position", "batch_size", "shuffle", "drop_last",
                               "max_from_buffer", "n_records", "fingerprint", "buffer") if k not in state]
        if missing:
            raise ValueError(f"PromptLoader state is missing {missing}")
        if state["n_records"] != len(self.records) or state["fingerprint"] != self._fingerprint:
            raise ValueError(f"PromptLoader state was saved for a different dataset ({state['n_records']} prompts, "
                             f"fingerprint {state['fingerprint'][:12]}) than this one ({len(self.records)} prompts, "
                             f"fingerprint {self._fingerprint[:12]})")
        for key in ("batch_size", "shuffle", "drop_last", "max_from_buffer"):
            if state[key] != getattr(self, key):
                raise ValueError(f"PromptLoader state has {key}={state[key]!r} but this loader has "
                                 f"{key}={getattr(self, key)!r}")
        epoch, position = state["epoch"], state["position"]
        if not (isinstance(epoch, int) and epoch >= 0 and isinstance(position, int)
                and 0 <= position <= len(self.records)):
            raise ValueError(f"PromptLoader state has an invalid epoch/position: {epoch!r}/{position!r}")
        unknown = [u for u in state["buffer"] if u not in self._index]
        if unknown:
            raise ValueError(f"PromptLoader state's buffer holds uids not in the dataset: {unknown[:5]}")
        self.seed = int(state["seed"])
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)
        self._buffer = [self._index[u] for u in state["buffer"]]
