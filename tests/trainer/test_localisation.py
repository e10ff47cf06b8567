"""Error localisation against hand-made responses: step rewards are the sums of their tokens' rewards, the
response counts when the *lowest* step reward is on the first wrong step (ties share the credit, so an
untrained PRM scores exactly chance), the chance rate is exactly mean(1 / steps), and right, unparsable
and all-steps-right-but-wrong responses are left out."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from primeflow.trainer.batch import train_batch_from_groups
from primeflow.trainer.data.chain_arithmetic import ChainProblem, chain_response
from primeflow.trainer.data.chain_steps import StepLabeller, label_steps
from primeflow.trainer.data.records import PromptRecord
from primeflow.trainer.data.token_spans import token_char_spans
from primeflow.trainer.rollout.types import RolloutGroup
from primeflow.trainer.stages.localisation import (
    localisation,
    localisation_credit,
    localisation_stage,
    step_rewards,
)
from primeflow.trainer.stages.results import PRMScores

EOS = 300


class CharTokenizer:
    """One token per character (ids = code points), EOS a special token that decodes to nothing."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join("" if i == EOS else chr(i) for i in ids)


class PairTokenizer(CharTokenizer):
    """Tokens whose single decodes do not concatenate (a 2-token character): exercises the prefix path."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out, i = [], 0
        ids = list(ids)
        while i < len(ids):
            if ids[i] == 1000:  # 1000, 1001 together decode to "é"; alone to nothing
                if i + 1 < len(ids) and ids[i + 1] == 1001:
                    out.append("é")
                    i += 2
                    continue
                i += 1
                continue
            out.append("" if ids[i] in (EOS, 1001) else chr(ids[i]))
            i += 1
        return "".join(out)


def test_token_spans_token_by_token_and_by_prefix():
    tok = CharTokenizer()
    assert token_char_spans(tok, [ord("a"), ord("b"), EOS], "ab") == [(0, 1), (1, 2), (2, 2)]
    tok = PairTokenizer()
    ids = [ord("x"), 1000, 1001, ord("y")]
    assert token_char_spans(tok, ids, "xéy") == [(0, 1), (1, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="not the ids of this response"):
        token_char_spans(tok, ids, "xéyz")


def test_step_rewards_sum_the_overlapping_tokens():
    rewards = [1.0, 2.0, 4.0, 8.0, 16.0]
    spans = [(0, 1), (1, 2), (2, 3), (3, 5), (5, 5)]
    assert step_rewards(rewards, spans, [(0, 2), (2, 4)]) == [3.0, 12.0]  # token 3 straddles: counts in step 2
    assert step_rewards(rewards + [0.0], spans, [(5, 5)]) == [0.0]
    with pytest.raises(ValueError):
        step_rewards([1.0], spans, [(0, 1)])


def test_credit_goes_to_the_lowest_step_not_the_highest():
    rewards = [0.1, -0.5, 0.2]
    assert localisation_credit(rewards, 1) == 1.0
    assert localisation_credit(rewards, 2) == 0.0  # the highest step: a metric taking the max would say 1
    assert localisation_credit(rewards, 0) == 0.0
    assert localisation_credit([0.0, 0.0, 0.0, 0.0], 2) == 0.25  # all tied (an untrained PRM): chance
    assert localisation_credit([-1.0, 3.0, -1.0], 2) == 0.5
    with pytest.raises(ValueError):
        localisation_credit([], 0)
    with pytest.raises(ValueError):
        localisation_credit([1.0], 1)


def test_chance_rate_is_exact():
    got = localisation([([0.0, -1.0], 1), ([0.0, 1.0, 2.0], 0), ([3.0, 2.0, 1.0, 0.0], 0)])
    assert got.n == 3
    assert Fraction(got.chance).limit_denominator(1000) == (Fraction(1, 2) + Fraction(1, 3) + Fraction(1, 4)) / 3
    assert got.localised == pytest.approx(2 / 3, abs=0)
    assert localisation([]).metrics() == {"prm/localisation_n": 0.0}
    assert set(got.metrics()) == {"prm/localisation", "prm/localisation_chance", "prm/localisation_n"}


P = ChainProblem(37, ("+", "+", "-", "+"), (45, 18, 6, 32))  # 82, 100, 94, 126
RIGHT = chain_response(P)
FIRST_WRONG = "37+45=83\n83+18=101\n101-6=95\n95+32=127\n\\boxed{127}"
LATER_WRONG = "37+45=82\n82+18=100\n100-6=96\n96+32=128\n\\boxed{128}"
UNPARSABLE = "\\boxed{12}"
BOXED_WRONG = RIGHT.replace("\\boxed{126}", "\\boxed{125}")  # every step right, answer wrong
SHORT_WRONG = "37+45=82\n82+19=101\n\\boxed{101}"  # 2 written steps, the second wrong


def _hand_made_batch(texts: list[str], scores: list[float], penalised_step: dict[int, int]):
    """A batch of two groups of K=3 from the texts; the PRM's log-ratio is -1 on every token of the
    penalised step of each response (row -> step index), +0.1 on every other token, 0 on EOS."""
    tok = CharTokenizer()
    ids = [tok.encode(t) + [EOS] for t in texts]
    groups = [RolloutGroup(uid="p", prompt_ids=[ord("q")], response_ids=ids[g * 3:(g + 1) * 3],
                           logprobs=[[0.0] * len(r) for r in ids[g * 3:(g + 1) * 3]], finish_reasons=["stop"] * 3,
                           texts=texts[g * 3:(g + 1) * 3], scores=scores[g * 3:(g + 1) * 3], policy_version=0)
              for g in range(2)]
    batch = train_batch_from_groups(groups, group_size=3, eos_ids={EOS}, pad_id=0)
    ratio = torch.zeros(batch.response_mask.shape)
    for i, text in enumerate(texts):
        ratio[i, :len(text)] = 0.1
        if i in penalised_step:
            step = label_steps(P, text).steps[penalised_step[i]]
            ratio[i, step.start:step.end] = -1.0
    ref = torch.zeros_like(ratio)
    prm_scores = PRMScores(ref_logp=ref, prm_logp=torch.where(batch.response_mask, ratio, 0.0),
                           token_rewards=torch.zeros_like(ratio))
    return tok, batch, prm_scores, groups


LABELLER = StepLabeller([(PromptRecord("p", [{"role": "user", "content": "x"}], "math", "126", "t"), P)])
TEXTS = [RIGHT, FIRST_WRONG, LATER_WRONG, UNPARSABLE, BOXED_WRONG, SHORT_WRONG]
SCORES = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_stage_on_hand_made_responses_localises_the_first_wrong_step():
    # the PRM penalises exactly the first wrong step of each localisable response (and a step of the
    # right response, which must be ignored)
    tok, batch, scores, groups = _hand_made_batch(TEXTS, SCORES, {0: 3, 1: 0, 2: 2, 5: 1})
    got = localisation_stage(LABELLER, groups, scores, batch, tok, beta=0.05)
    assert got.n == 3  # FIRST_WRONG, LATER_WRONG, SHORT_WRONG; right / unparsable / all-steps-right left out
    assert got.localised == 1.0
    assert got.chance == pytest.approx((1 / 4 + 1 / 4 + 1 / 2) / 3, abs=1e-15)


def test_stage_scores_zero_when_the_prm_points_elsewhere():
    # penalise the step after the first wrong one: the first wrong step is then never the lowest
    tok, batch, scores, groups = _hand_made_batch(TEXTS, SCORES, {1: 1, 2: 3, 5: 0})
    got = localisation_stage(LABELLER, groups, scores, batch, tok, beta=0.05)
    assert (got.n, got.localised) == (3, 0.0)


def test_untrained_prm_is_exactly_at_chance():
    tok, batch, scores, groups = _hand_made_batch(TEXTS, SCORES, {})
    scores = PRMScores(scores.ref_logp, scores.ref_logp.clone(), scores.token_rewards)  # PRM == ref
    got = localisation_stage(LABELLER, groups, scores, batch, tok, beta=0.05)
    assert got.localised == got.chance


def test_stage_refuses_groups_that_do_not_match_the_batch():
    tok, batch, scores, groups = _hand_made_batch(TEXTS, SCORES, {})
    with pytest.raises(ValueError, match="rollout groups hold 3 responses"):
        localisation_stage(LABELLER, groups[:1], scores, batch, tok, beta=0.05)
