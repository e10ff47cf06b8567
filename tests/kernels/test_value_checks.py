"""Value checks read back once per op call (issue 17 part 2): the RL ops' validators queue their tensor-value
conditions on one ValueChecks, so no check reads a device scalar on its own (aten._local_scalar_dense: what
bool()/int()/item() on a tensor dispatch to, one CUDA stream sync each); the only read-back is ValueChecks.run's
single stacked copy. Bad values still raise ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch
from primeflow.kernels._rl_validate import validate_prm_ce_args, validate_rloo_args
from primeflow.kernels._validate import ValueChecks, check_labels
from torch.utils._python_dispatch import TorchDispatchMode


class CountScalarReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def _rloo_inputs(B: int = 4, T: int = 6):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    return torch.randn(B, T, generator=g), torch.rand(B, generator=g), mask


def _rloo(rewards, outcome, mask):
    return validate_rloo_args(rewards, outcome, mask, group_size=2, gamma_process=1.0, gamma_outcome=1.0,
                              reward_norm="batch_norm", form="prime", whiten=False, process_coef=1.0,
                              outcome_coef=1.0)


def test_validators_read_no_scalar_on_their_own():
    rewards, outcome, mask = _rloo_inputs()
    with CountScalarReads() as rloo:
        valid = _rloo(rewards, outcome, mask)
    with CountScalarReads() as prm:
        validate_prm_ce_args(rewards, rewards, mask, outcome, beta=0.05)
    ids = torch.tensor([0, 3, 9])  # made outside the mode: building a tensor from a list reads scalars
    with CountScalarReads() as labels:
        checks = ValueChecks()
        check_labels("labels", ids, 3, 10, torch.device("cpu"), checks)
        checks.run()
    assert torch.equal(valid, mask != 0)
    assert (rloo.reads, prm.reads, labels.reads) == (0, 0, 0)


@pytest.mark.parametrize("bad, message", [
    ("mask_value", "mask must contain only 0 and 1"),
    ("empty_row", "every row needs at least one valid token"),
    ("hole", "must be a prefix mask per row"),
])
def test_rloo_value_errors_still_name_the_argument(bad, message):
    rewards, outcome, mask = _rloo_inputs()
    if bad == "mask_value":
        mask[1, 0] = 0.5
    elif bad == "empty_row":
        mask[2] = 0.0
    else:
        mask[3] = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=message):
        _rloo(rewards, outcome, mask)


def test_prm_outcome_range_and_label_range_messages():
    rewards, outcome, mask = _rloo_inputs()
    outcome[0] = 1.5
    with pytest.raises(ValueError, match=r"outcome must lie in \[0, 1\]"):
        validate_prm_ce_args(rewards, rewards, mask, outcome, beta=0.05)
    checks = ValueChecks()
    check_labels("labels", torch.tensor([0, -2, 12]), 3, 10, torch.device("cpu"), checks)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\) \(the vocabulary\), got values in \[-2, 12\]"):
        checks.run()


def test_run_raises_the_first_failing_check_and_is_empty_afterwards():
    checks = ValueChecks()
    checks.add(torch.tensor(True), "first")
    checks.add(torch.tensor(False), lambda: "second")
    checks.add(torch.tensor(False), "third")
    with pytest.raises(ValueError, match="^second$"):
        checks.run()
    checks.run()  # the queue was consumed: nothing left to fail


def test_prime_inputs_read_back_once_and_name_cu_seqlens():
    """check_prime_inputs queues the labels' range and both cu_seqlens conditions on one ValueChecks: no
    scalar read of its own when all hold; each bad cu_seqlens still raises naming it and quoting the values."""
    from primeflow.kernels.prime_rewards.types import check_prime_inputs

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 11, (5,), generator=g)
    prm, ref = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    cu = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    with CountScalarReads() as reads:
        check_prime_inputs(labels, prm, ref, None, 0.05, None, cu)
    assert reads.reads == 0
    with pytest.raises(ValueError, match=r"start at 0 and end at N=5 .*got 0 \.\.\. 4"):
        check_prime_inputs(labels, prm, ref, None, 0.05, None, torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="nondecreasing .* a step of -2"):
        check_prime_inputs(labels, prm, ref, None, 0.05, None, torch.tensor([0, 3, 1, 5]))


def test_trusted_values_skips_only_the_value_checks_and_only_inside():
    from primeflow.kernels import trusted_values

    bad_ids = torch.tensor([0, 3, 12])  # 12 is outside the vocabulary of 10
    with trusted_values(), CountScalarReads() as inside:
        check_labels("labels", bad_ids, 3, 10, torch.device("cpu"))  # the caller vouched for the values
    assert inside.reads == 0
    with pytest.raises(ValueError, match="must have shape"), trusted_values():
        check_labels("labels", bad_ids, 4, 10, torch.device("cpu"))  # shape checks still run
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        check_labels("labels", bad_ids, 3, 10, torch.device("cpu"))  # and the values again after the block
