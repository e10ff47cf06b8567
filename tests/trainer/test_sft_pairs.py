"""`primeflow sft --data`: the built-in tasks give their SFT targets (the chain task's written step by step,
each scoring 1 with the verifier); a file without math rows fails naming itself."""

from __future__ import annotations

import pytest
from primeflow.trainer.data.chain_steps import parse_steps
from primeflow.trainer.sft import sft_pairs
from primeflow.trainer.verifiers import math_score


def test_chain_targets_are_written_step_by_step():
    pairs = sft_pairs("chain", n=6, seed=0)
    assert len(pairs) == 6
    for messages, response in pairs:
        assert len(parse_steps(response)) == 3  # the chain task's default: 3 steps
        answer = response.rsplit("\\boxed{", 1)[1].rstrip("}")
        assert math_score(response, answer) == 1.0
        assert messages[-1]["content"].endswith("=")


def test_arithmetic_targets_are_the_boxed_answer():
    (_, response), = sft_pairs("arithmetic", n=1, seed=0)
    assert response.startswith("\\boxed{") and not parse_steps(response)


def test_a_file_without_math_rows_fails(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text('{"problem": "p", "tests": {"inputs": ["1"], "outputs": ["1"]}}\n')
    with pytest.raises(ValueError, match="no math rows"):
        sft_pairs(str(path), n=1, seed=0)
