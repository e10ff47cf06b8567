"""Rollout + verification: the `generate_and_score` callback of the batch assembler.

For each fetch of prompts (all ranks fetch the same prompts: the loader is replicated with one seed),
the prompts are split into contiguous chunks, one per vLLM replica; each replica samples K responses per
prompt, decodes and verifies them; the groups are all-gathered so every rank holds the same global results
in prompt order. Sampling seeds depend only on (train.seed, step, fetch, global prompt position), never on
how prompts were split, so the data a step sees does not depend on the number of replicas as long as vLLM
itself is batch-invariant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from ..config import Config
from ..data import GroupResults, PromptRecord, encode_prompts
from ..rollout import RolloutEngine, RolloutGroup, SamplingConfig
from ..verifiers import code_scores, math_scores

_SEED_SPACE = 2**31 - 1


@dataclass
class StageClock:
    """Seconds spent per stage within a step (the rollout callback adds to `rollout` and `verify`)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt


def verify(records: list[PromptRecord], texts: list[list[str]]) -> list[list[float]]:
    """Scores of each prompt's responses: math answers by equivalence, code by sandboxed tests."""
    flat_math, flat_code = [], []
    for i, (rec, group) in enumerate(zip(records, texts, strict=True)):
        for k, text in enumerate(group):
            (flat_code if rec.ability == "code" else flat_math).append((i, k, text, rec.ground_truth))
    scores = [[0.0] * len(g) for g in texts]
    if flat_math:
        for (i, k, *_), s in zip(flat_math, math_scores([t for *_, t, _ in flat_math],
                                                        [g for *_, g in flat_math]), strict=True):
            scores[i][k] = s
    if flat_code:
        for (i, k, *_), s in zip(flat_code, code_scores([t for *_, t, _ in flat_code],
                                                        [g for *_, g in flat_code]), strict=True):
            scores[i][k] = s
    return scores


class RolloutStage:
    def __init__(self, engine: RolloutEngine, tokenizer: Any, config: Config) -> None:
        self.engine, self.tokenizer, self.config = engine, tokenizer, config
        self.clock = StageClock()
        self.step = 0
        self._fetch = 0
        self.policy_version = 0

    def begin_step(self, step: int, clock: StageClock, *, policy_version: int) -> None:
        self.step, self.clock, self._fetch, self.policy_version = step, clock, 0, policy_version

    def _seed(self, first_row: int) -> int:
        base = (self.config.train.seed * 1_000_003 + self.step * 7_919 + self._fetch * 104_729) * 9_973
        return (base + first_row) % _SEED_SPACE

    def __call__(self, records: list[PromptRecord]) -> GroupResults:
        cfg, K = self.config, self.config.rollout.n
        t0 = time.perf_counter()
        prompt_ids = encode_prompts(self.tokenizer, records, max_prompt_len=cfg.data.max_prompt_len)
        replicas, me = self.engine.num_replicas, self.engine.replica_index
        bounds = [len(records) * r // replicas for r in range(replicas + 1)]
        lo, hi = bounds[me], bounds[me + 1]
        local: list[RolloutGroup] = []
        if hi > lo:
            sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                      top_k=cfg.rollout.top_k, max_tokens=cfg.rollout.max_tokens,
                                      seed=self._seed(lo * K))
            out = self.engine.generate(prompt_ids[lo:hi], K, sampling)
            t1 = time.perf_counter()
            self.clock.add("rollout", t1 - t0)
            texts = [[self.tokenizer.decode(out.response_ids[j * K + k], skip_special_tokens=True)
                      for k in range(K)] for j in range(hi - lo)]
            scores = verify(records[lo:hi], texts)
            self.clock.add("verify", time.perf_counter() - t1)
            for j in range(hi - lo):
                rows = slice(j * K, (j + 1) * K)
                local.append(RolloutGroup(uid=records[lo + j].uid, prompt_ids=out.prompt_ids[j * K],
                                          response_ids=out.response_ids[rows], logprobs=out.logprobs[rows],
                                          finish_reasons=out.finish_reasons[rows], texts=texts[j], scores=scores[j],
                                          policy_version=self.policy_version))
        else:
            self.clock.add("rollout", time.perf_counter() - t0)
        groups = self._gather(local)
        self._fetch += 1
        return GroupResults(scores=[s for g in groups for s in g.scores], payload=groups,
                            truncated=[t for g in groups for t in g.truncated])

    def _gather(self, local: list[RolloutGroup]) -> list[RolloutGroup]:
        """Every rank gets every replica's groups, in prompt order (one copy per replica: its first rank's)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        t0 = time.perf_counter()
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        tp = self.engine.tp_size
        self.clock.add("rollout", time.perf_counter() - t0)
        return [g for rank in range(0, len(parts), tp) for g in parts[rank]]
