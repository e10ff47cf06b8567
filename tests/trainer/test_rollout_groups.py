"""One rollout type from vLLM to the batch: the rollout stage turns the engine's rows into one RolloutGroup per
prompt (its K contiguous rows, their decoded texts and verifier scores), and train_batch_from_groups lays the
groups out as the training batch, so batch row b is engine row b with its own score, log-probs and finish."""

from __future__ import annotations

import pytest
import torch
from primeflow.models import make_tiny_checkpoint
from primeflow.trainer.batch import train_batch_from_groups
from primeflow.trainer.config import Config
from primeflow.trainer.data.records import PromptRecord
from primeflow.trainer.rollout.types import RolloutBatch, RolloutGroup
from primeflow.trainer.stages import rollout as rollout_stage
from primeflow.trainer.stages.rollout import RolloutStage, StageClock
from transformers import AutoTokenizer

K, PROMPTS = 3, 4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(make_tiny_checkpoint(tmp_path_factory.mktemp("tok"), seed=0)))


class FakeEngine:
    """Engine row j*K + k answers \\boxed{10j + k}; odd k is cut at max_tokens (no EOS); every token of row r
    has log-prob -(r + 1) / 64 (exact in fp32), so each row is recognisable in the batch."""

    num_replicas, replica_index, tp_size = 1, 0, 1

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = [tokenizer.eos_token_id]

    def generate(self, prompt_ids, n, sampling) -> RolloutBatch:
        responses, logprobs, finish = [], [], []
        for j in range(len(prompt_ids)):
            for k in range(n):
                ids = self.tokenizer.encode(f"so \\boxed{{{10 * j + k}}}", add_special_tokens=False)
                ids += [] if k % 2 else [self.tokenizer.eos_token_id]
                responses.append(ids)
                logprobs.append([-(len(logprobs) + 1) / 64] * len(ids))
                finish.append("length" if k % 2 else "stop")
        rows = [p for p in prompt_ids for _ in range(n)]
        return RolloutBatch(rows, responses, logprobs, finish, group_size=n,
                            prompt_index=[j for j in range(len(prompt_ids)) for _ in range(n)])


def _boxed_verifier(texts, truths, **_):
    # stands in for the math verifier: what is tested here is where each score lands
    return [float(f"\\boxed{{{t}}}" in text) for text, t in zip(texts, truths, strict=True)]


def test_engine_rows_become_groups_and_batch_rows_in_order(tokenizer, monkeypatch):
    monkeypatch.setattr(rollout_stage, "math_scores", _boxed_verifier)
    config = Config()
    config.rollout.n = K
    # prompt j's right answer is its response k = j % K
    records = [PromptRecord(f"u{j}", [{"role": "user", "content": f"question {j}" + " more" * j}], "math",
                            str(10 * j + j % K), "test") for j in range(PROMPTS)]
    engine = FakeEngine(tokenizer)
    stage = RolloutStage(engine, tokenizer, config)
    stage.begin_step(1, StageClock(), policy_version=7)
    res = stage(records)

    groups = res.payload
    assert all(isinstance(g, RolloutGroup) for g in groups)
    assert [g.uid for g in groups] == [r.uid for r in records]
    assert {g.policy_version for g in groups} == {7}
    want_scores = [[float(k == j % K) for k in range(K)] for j in range(PROMPTS)]
    assert [g.scores for g in groups] == want_scores
    assert list(res.scores) == [s for g in want_scores for s in g]
    assert list(res.truncated) == [bool(k % 2) for _ in range(PROMPTS) for k in range(K)]
    assert [g.texts for g in groups] == [[f"so \\boxed{{{10 * j + k}}}" for k in range(K)] for j in range(PROMPTS)]

    batch = train_batch_from_groups(groups, group_size=K, eos_ids=set(engine.eos_token_ids),
                                    pad_id=tokenizer.pad_token_id)
    assert batch.rows == PROMPTS * K and batch.group_size == K
    assert batch.outcome.tolist() == res.scores
    assert batch.truncated.tolist() == res.truncated
    for j, g in enumerate(groups):
        for k in range(K):
            b = j * K + k
            P, R = len(g.prompt_ids), len(g.response_ids[k])
            assert batch.input_ids[b, :P + R].tolist() == g.prompt_ids + g.response_ids[k]
            assert batch.prompt_len[b] == P and batch.response_lens[b] == R
            assert torch.equal(batch.vllm_logp[b, :R], torch.full((R,), -(b + 1) / 64))
    # distinct prompts: a group whose prompt came from another group's row would show here
    assert len({tuple(g.prompt_ids) for g in groups}) == PROMPTS


def _group(**changes) -> RolloutGroup:
    fields = dict(uid="u", prompt_ids=[1], response_ids=[[2, 3], [4]], logprobs=[[-0.5, -0.5], [-1.0]],
                  finish_reasons=["stop", "length"], texts=["a", "b"], scores=[1.0, 0.0], policy_version=0)
    return RolloutGroup(**{**fields, **changes})


@pytest.mark.parametrize("changes,message", [
    (dict(scores=[1.0]), "1 scores for 2 responses"),
    (dict(texts=["a", "b", "c"]), "3 texts for 2 responses"),
    (dict(logprobs=[[-0.5], [-1.0]]), "response 0: 2 ids but 1 log-probs"),
    (dict(finish_reasons=["stop", "abort"]), r"unknown finish reason\(s\) \['abort'\]"),
])
def test_group_refuses_inconsistent_responses(changes, message):
    with pytest.raises(ValueError, match=message):
        _group(**changes)


def test_batch_refuses_groups_of_the_wrong_size():
    assert train_batch_from_groups([_group(), _group()], group_size=2, eos_ids={9}, pad_id=0).rows == 4
    with pytest.raises(ValueError, match=r"groups of 3 responses each, got group sizes \[2\]"):
        train_batch_from_groups([_group()], group_size=3, eos_ids={9}, pad_id=0)
