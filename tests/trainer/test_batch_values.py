"""check_batch_values (trainer/batch.py): the step's value checks, made once on the host copy of the batch
because the stages run the kernels under kernels.trusted_values. Each bad value is named; a good batch passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from primeflow.trainer.batch import build_train_batch, check_batch_values


def _batch(*, outcome=(1.0, 0.0), responses=((5, 9), (7,)), prompt=(1, 2)):
    responses = [list(r) for r in responses]
    return build_train_batch([list(prompt)] * 2, responses, [[0.0] * len(r) for r in responses], ["stop"] * 2,
                             list(outcome), group_size=2, eos_ids={9}, pad_id=0)


def test_a_good_batch_passes():
    check_batch_values(_batch(), vocab_size=10)


@pytest.mark.parametrize("make, message", [
    (lambda: _batch(responses=((5, 10), (7,))), r"token ids must lie in \[0, 10\).*\[0, 10\]"),
    (lambda: _batch(prompt=(-1, 2)), r"token ids must lie in \[0, 10\).*\[-1, "),
    (lambda: _batch(responses=((5, 9), ())), r"responses \[1\] have no token"),
    (lambda: _batch(outcome=(1.0, 1.5)), r"outcomes must lie in \[0, 1\]; responses \[1\] have \[1.5\]"),
])
def test_each_bad_value_is_named(make, message):
    with pytest.raises(ValueError, match=message):
        check_batch_values(make(), vocab_size=10)


def test_it_reads_the_host_copy_only():
    batch = _batch()
    on_meta = dataclasses.replace(batch, input_ids=torch.empty(batch.input_ids.shape, device="meta"))
    with pytest.raises(ValueError, match="host copy"):
        check_batch_values(on_meta, vocab_size=10)
