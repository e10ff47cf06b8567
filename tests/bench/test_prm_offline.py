"""bench/prm_offline.py's data: the corrupted response really is wrong at the step it names (the task's own
step labeller agrees) and only there, its final answer differs from the truth, and the step spans the
per-step rewards are summed over are exactly the step lines' tokens."""

from __future__ import annotations

import random

import pytest
from primeflow.trainer.data.chain_arithmetic import chain_problems, chain_response
from primeflow.trainer.data.chain_steps import label_steps


@pytest.mark.parametrize("seed", range(5))
def test_corrupted_response_is_wrong_exactly_at_its_step(bench_module, seed):
    offline = bench_module("prm_offline")
    rng = random.Random(seed)
    for problem in chain_problems(50, seed=seed, steps=4, digits=1, ops=["+", "-", "*"]):
        text, k = offline.corrupt(problem, rng)
        labels = label_steps(problem, text)
        assert labels.first_wrong == k
        assert all(s.correct for s in labels.steps[:k]) and len(labels.steps) == len(problem.ops)
        assert f"\\boxed{{{problem.answer}}}" not in text  # the error reaches the answer
        assert label_steps(problem, chain_response(problem)).first_wrong is None


class _ByteTokenizer:
    """What build_examples needs of the tiny byte-level tokenizer: one id per character."""

    def convert_tokens_to_ids(self, token):
        return 999

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<u>{messages[-1]['content']}</u>"

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [ord(c) for c in text]}


def test_examples_pair_a_correct_and_a_wrong_response_with_step_spans(bench_module):
    offline = bench_module("prm_offline")
    pairs = offline.build_examples(_ByteTokenizer(), 20, seed=3, knobs={"steps": 4, "digits": 1,
                                                                       "ops": ["+", "-", "*"]})
    assert len(pairs) == 20
    for good, bad in pairs:
        assert (good["label"], bad["label"]) == (1.0, 0.0) and good["wrong_step"] is None
        assert good["start"] == bad["start"] and good["ids"][:good["start"]] == bad["ids"][:bad["start"]]
        for e in (good, bad):
            assert e["ids"][-1] == 999  # the end-of-turn token is scored too
            response = "".join(chr(i) for i in e["ids"][e["start"]:-1])
            lines = response.split("\n")
            assert [response[a:b] for a, b in e["steps"]] == lines[:-1] and lines[-1].startswith("\\boxed{")
        assert 0 <= bad["wrong_step"] < len(bad["steps"])


def test_pairwise_accuracy_counts_every_mixed_pair_once(bench_module):
    offline = bench_module("prm_offline")
    groups = [[{"label": 1.0}, {"label": 0.0}], [{"label": 0.0}, {"label": 1.0}, {"label": 1.0}]]
    # pairs: (0 > 1) right; (2 vs 1) right, (3 vs 1) tie -> 0.5: (1 + 1 + 0.5) / 3
    assert offline.pairwise_accuracy(groups, [0.3, 0.1, -0.2, 0.4, -0.2]) == (1 + 1 + 0.5) / 3
    assert offline.pairwise_accuracy(groups, [0.0] * 5) == 0.5  # an untrained PRM: all ties
