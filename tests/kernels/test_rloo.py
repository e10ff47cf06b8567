"""rloo_advantages on CPU tensors (the torch path and the reference) vs float64 truth from the spec.

Truth: tests/kernels/rl_truth64.py, a per-group, per-position Python loop written from prime_spec 3.3 and
7.1-7.4, computed from the *same* (already rounded) inputs, so only fp32 arithmetic is counted as error
(the per-dtype table in tests/tolerances.py). The Triton path runs the same checks in
test_rl_ops_triton.py (under TRITON_INTERPRET=1). Hand-derived cases and the spec's identities follow.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import primeflow.kernels as K
import pytest
import torch
from primeflow.kernels import reference
from tolerances import assert_close_to_truth


def load_rl_truth():
    path = Path(__file__).with_name("rl_truth64.py")
    spec = importlib.util.spec_from_file_location("_primeflow_tests_rl_truth64", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


truth = load_rl_truth()
IMPLEMENTATIONS = {"public": K.rloo_advantages, "reference": reference.rloo_advantages}


def random_rloo_inputs(generator, groups, k, t, dtype=torch.float32):
    """Ragged prefix masks (lengths 1..T, always including 1 and T), Gaussian rewards, mixed outcomes."""
    b = groups * k
    lengths = torch.randint(1, t + 1, (b,), generator=generator)
    lengths[0], lengths[-1] = 1, t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    rewards = torch.randn(b, t, generator=generator).to(dtype)
    rewards = torch.where(mask, rewards, torch.full_like(rewards, 7.0))  # padding garbage must be ignored
    outcome = torch.randint(0, 5, (b,), generator=generator).float() / 4  # math 0/1 and code fractions
    return rewards, outcome, mask


CONFIGS = [
    dict(
        form=f, reward_norm=n, whiten=w, gamma_process=gp, gamma_outcome=go, process_coef=pc, outcome_coef=oc
    )
    for f, n, w, (gp, go), (pc, oc) in itertools.product(
        ("prime", "paper"),
        ("batch_norm", "none"),
        (True, False),
        ((1.0, 1.0), (0.9, 0.7)),
        ((1.0, 1.0), (5.0, 0.5)),
    )
]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_matches_truth_random_groups(generator, impl, cfg):
    for groups, k, t in ((3, 2, 9), (2, 4, 13), (4, 2, 1)):
        rewards, outcome, mask = random_rloo_inputs(generator, groups, k, t)
        out = IMPLEMENTATIONS[impl](rewards, outcome, mask, group_size=k, **cfg)
        assert out.dtype == torch.float32 and out.shape == rewards.shape
        want = truth.rloo_truth(rewards, outcome, mask, group_size=k, **cfg)
        assert_close_to_truth(out, want, torch.float32, what=f"rloo {impl} G={groups} K={k} T={t}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_inputs(generator, dtype):
    rewards, outcome, mask = random_rloo_inputs(generator, 4, 4, 11, dtype)
    out = K.rloo_advantages(rewards, outcome.to(dtype), mask.float(), group_size=4)
    assert out.dtype == torch.float32
    want = truth.rloo_truth(rewards, outcome.to(dtype), mask, group_size=4)
    assert_close_to_truth(out, want, torch.float32, what=f"rloo {dtype} inputs")


# ---- hand-derived cases ---------------------------------------------------------------------------
# K=2, T=3. rewards row0 = [1, 2, 3] (3 valid), row1 = [4, 2, pad] (2 valid); outcome = [1, 0].
# Means m = [2, 3], S = 5. prime: r*2 - 5  -> row0 [-3, -1, 1], row1 [3, -1, 0(pad)].
# Outcome RLOO: [1 - 0, 0 - 1] = [1, -1] on the last valid tokens (t=2 and t=1).
# Reverse cumsums (gamma 1): row0 process [-3, 0, 1] + outcome [1, 1, 1] = [-2, 1, 2];
#                            row1 process [2, -1, 0] + outcome [-1, -1, 0] = [1, -2, 0].
# paper: r - (S - m_i)/(K-1): row0 r - 3 = [-2, -1, 0] -> [-3, -1, 0] + 1 = [-2, 0, 1];
#                             row1 r - 2 = [2, 0, pad] -> [2, 0, 0] + [-1, -1, 0] = [1, -1, 0].
# Whitened prime: valid values [-2, 1, 2, 1, -2]: mean 0, unbiased var 14/4 -> x / sqrt(3.5 + 1e-8).
# batch_norm: reverse cumsums row0 [6, 5, 3], row1 [6, 2] -> divide process rewards by 6 + 1e-6 (the
# transform is linear, so the process returns scale by 1/(6 + 1e-6) and the outcome part is unchanged).
# gamma_process = 0.5, prime: row0 process t2: 1, t1: -1 + 0.5*1 = -0.5, t0: -3 + 0.5*(-0.5) = -3.25.
K2_REWARDS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 2.0, 99.0]])
K2_OUTCOME = torch.tensor([1.0, 0.0])
K2_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
S6 = 6.0 + 1e-6
K2_CASES = [
    (dict(form="prime"), [[-2.0, 1.0, 2.0], [1.0, -2.0, 0.0]]),
    (dict(form="paper"), [[-2.0, 0.0, 1.0], [1.0, -1.0, 0.0]]),
    (dict(form="prime", gamma_process=0.5), [[-3.25 + 1, -0.5 + 1, 2.0], [3 - 0.5 + -1, -2.0, 0.0]]),
    (
        dict(form="prime", reward_norm="batch_norm"),
        [[-3 / S6 + 1, 1.0, 1 / S6 + 1], [2 / S6 - 1, -1 / S6 - 1, 0]],
    ),
    (
        dict(form="prime", whiten=True),
        [[v / math.sqrt(3.5 + 1e-8) for v in row] for row in [[-2.0, 1.0, 2.0], [1.0, -2.0, 0.0]]],
    ),
]

# K=4, T=2. rewards row0 [1, 3], row1 [2, pad], row2 [0, 0], row3 [-4, pad]; outcome [1, 1, 0, 0].
# m = [2, 2, 0, -4], S = 0. prime: r*4/3 - 0 -> row0 [4/3, 4], row1 [8/3], row2 [0, 0], row3 [-16/3].
# Outcome RLOO o_i - mean of the other three: [2/3, 2/3, -2/3, -2/3].
# Returns: row0 [4/3 + 4 + 2/3, 4 + 2/3] = [6, 14/3]; row1 [10/3, 0]; row2 [-2/3, -2/3]; row3 [-6, 0].
# paper: r - (S - m_i)/3 = r + m_i/3 -> row0 [5/3, 11/3], row1 [8/3], row2 [0, 0], row3 [-16/3];
# returns row0 [6, 13/3], row1 [10/3, 0], row2 [-2/3, -2/3], row3 [-6, 0]  (token-0 returns equal prime's).
K4_REWARDS = torch.tensor([[1.0, 3.0], [2.0, -50.0], [0.0, 0.0], [-4.0, 1e30]])
K4_OUTCOME = torch.tensor([1.0, 1.0, 0.0, 0.0])
K4_MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=torch.bool)
K4_CASES = [
    (dict(form="prime"), [[6.0, 14 / 3], [10 / 3, 0.0], [-2 / 3, -2 / 3], [-6.0, 0.0]]),
    (dict(form="paper"), [[6.0, 13 / 3], [10 / 3, 0.0], [-2 / 3, -2 / 3], [-6.0, 0.0]]),
]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", range(len(K2_CASES)))
def test_hand_computed_k2(impl, case):
    overrides, expected = K2_CASES[case]
    kwargs = dict(reward_norm="none", whiten=False) | overrides
    out = IMPLEMENTATIONS[impl](K2_REWARDS, K2_OUTCOME, K2_MASK, group_size=2, **kwargs)
    assert_close_to_truth(
        out, torch.tensor(expected, dtype=torch.float64), torch.float32, what=f"K=2 {kwargs}"
    )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", range(len(K4_CASES)))
def test_hand_computed_k4(impl, case):
    overrides, expected = K4_CASES[case]
    out = IMPLEMENTATIONS[impl](
        K4_REWARDS, K4_OUTCOME, K4_MASK, group_size=4, reward_norm="none", whiten=False, **overrides
    )
    assert_close_to_truth(
        out, torch.tensor(expected, dtype=torch.float64), torch.float32, what=f"K=4 {overrides}"
    )


# ---- identities from the spec ---------------------------------------------------------------------
def test_outcome_part_is_plain_rloo(generator):
    """7.1/7.3: with no process reward the advantage is o_i - mean_{j!=i} o_j on every valid token."""
    _, outcome, mask = random_rloo_inputs(generator, 3, 4, 10)
    out = K.rloo_advantages(torch.zeros(mask.shape), outcome, mask, group_size=4, whiten=False)
    o = outcome.double().view(-1, 4)
    loo = (o - (o.sum(-1, keepdim=True) - o) / 3).reshape(-1)
    want = torch.where(mask, loo[:, None], 0.0)
    assert_close_to_truth(out, want, torch.float32, what="plain RLOO")


def test_prime_and_paper_agree_on_token_zero(generator):
    """7.3: the return from the first token is the same in both forms (gamma = 1); later ones differ."""
    rewards, outcome, mask = random_rloo_inputs(generator, 3, 4, 12)
    prime = K.rloo_advantages(rewards, outcome, mask, group_size=4, form="prime", whiten=False)
    paper = K.rloo_advantages(rewards, outcome, mask, group_size=4, form="paper", whiten=False)
    assert_close_to_truth(prime[:, 0], paper[:, 0].double(), torch.float32, what="token-0 returns")
    long_rows = mask.sum(-1) > 2
    assert (prime[long_rows, 1] - paper[long_rows, 1]).abs().max() > 1e-3  # the forms really differ later


def test_whitened_moments(generator):
    """7.4: masked mean 0 and unbiased variance var/(var + 1e-8) ~ 1 over the valid tokens."""
    rewards, outcome, mask = random_rloo_inputs(generator, 4, 4, 15)
    out = K.rloo_advantages(rewards, outcome, mask, group_size=4).double()
    values = out[mask]
    assert abs(values.mean().item()) < 1e-6
    assert abs(values.var(unbiased=True).item() - 1.0) < 1e-5


def test_beta_and_equal_coefficients_cancel(generator):
    """3.3: batch_norm removes the reward scale (beta); 7.4: equal source weights are scale-irrelevant."""
    rewards, outcome, mask = random_rloo_inputs(generator, 3, 4, 10)
    base = K.rloo_advantages(rewards, outcome, mask, group_size=4)
    scaled = K.rloo_advantages(rewards * 20.0, outcome, mask, group_size=4)
    weighted = K.rloo_advantages(rewards, outcome, mask, group_size=4, process_coef=5.0, outcome_coef=5.0)
    assert_close_to_truth(scaled, base.double(), torch.float32, what="reward scale")
    assert_close_to_truth(weighted, base.double(), torch.float32, what="5:5 coefficients")


def test_groups_are_independent_without_batch_coupling(generator):
    """Only the group's own rows enter its baseline (batch_norm and whitening are the batch-wide parts)."""
    rewards, outcome, mask = random_rloo_inputs(generator, 3, 2, 8)
    kwargs = dict(group_size=2, reward_norm="none", whiten=False)
    base = K.rloo_advantages(rewards, outcome, mask, **kwargs)
    rewards2, outcome2 = rewards.clone(), outcome.clone()
    rewards2[2:4] += 3.0
    outcome2[2:4] = 1.0 - outcome2[2:4]
    moved = K.rloo_advantages(rewards2, outcome2, mask, **kwargs)
    assert torch.equal(base[:2], moved[:2]) and torch.equal(base[4:], moved[4:])
    assert not torch.equal(base[2:4], moved[2:4])


def test_padding_values_are_ignored(generator):
    rewards, outcome, mask = random_rloo_inputs(generator, 2, 4, 9)
    a = K.rloo_advantages(rewards, outcome, mask, group_size=4)
    b = K.rloo_advantages(torch.where(mask, rewards, float("nan")), outcome, mask, group_size=4)
    assert torch.equal(a, b)


# ---- NaN and bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_nan_propagates(generator, impl):
    rewards, outcome, mask = random_rloo_inputs(generator, 3, 2, 8)
    fn = IMPLEMENTATIONS[impl]
    bad = rewards.clone()
    bad[3, 0] = float("nan")  # row 3 = group 1; position 0 is always valid
    assert fn(bad, outcome, mask, group_size=2).isnan().all()  # batch_norm's max and whitening: everywhere
    local = fn(bad, outcome, mask, group_size=2, reward_norm="none", whiten=False)
    assert local[2:4][mask[2:4]].isnan().all()  # the whole group 1 (its baseline)
    assert not local[:2].isnan().any() and not local[4:].isnan().any()
    bad_outcome = outcome.clone()
    bad_outcome[0] = float("nan")
    assert fn(rewards, bad_outcome, mask, group_size=2).isnan().all()


def _call(**overrides):
    args = dict(
        token_rewards=torch.zeros(4, 3),
        outcome=torch.zeros(4),
        mask=torch.ones(4, 3, dtype=torch.bool),
        group_size=2,
    )
    args |= overrides
    return K.rloo_advantages(args.pop("token_rewards"), args.pop("outcome"), args.pop("mask"), **args)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_group_of_one_is_rejected(impl):
    with pytest.raises(ValueError, match=r"group_size must be >= 2.*leave-one-out"):
        IMPLEMENTATIONS[impl](torch.zeros(4, 3), torch.zeros(4), torch.ones(4, 3), group_size=1)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (dict(group_size=3), r"B=4 must be a multiple of group_size=3.*contiguous"),
        (dict(group_size=0), r"group_size must be >= 2"),
        (dict(group_size=2.0), r"group_size must be an int"),
        (dict(token_rewards=torch.zeros(4)), r"token_rewards must be 2-D"),
        (dict(token_rewards=torch.zeros(4, 3, dtype=torch.int64)), r"token_rewards must be a floating-point"),
        (dict(token_rewards=torch.zeros(4, 0), mask=torch.ones(4, 0)), r"T = 0"),
        (dict(outcome=torch.zeros(3)), r"outcome must have shape \[B\] = \[4\]"),
        (dict(outcome=torch.zeros(4, 1)), r"outcome must have shape"),
        (dict(mask=torch.ones(4, 2)), r"mask must have shape \[B, T\] = \[4, 3\]"),
        (dict(mask=torch.full((4, 3), 2.0)), r"mask must contain only 0 and 1"),
        (dict(mask=torch.tensor([[1, 0, 1]] * 4)), r"mask must be a prefix mask"),
        (dict(mask=torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]])), r"at least one valid token"),
        (dict(gamma_process=1.5), r"gamma_process must be <= 1.0"),
        (dict(gamma_outcome=-0.1), r"gamma_outcome must be >= 0.0"),
        (dict(gamma_process=float("nan")), r"gamma_process must be a finite number"),
        (dict(reward_norm="max"), r"reward_norm must be one of \['batch_norm', 'none'\]"),
        (dict(form="grpo"), r"form must be one of \['prime', 'paper'\]"),
        (dict(whiten=1), r"whiten must be a bool"),
        (dict(process_coef=float("inf")), r"process_coef must be a finite number"),
        (dict(outcome=torch.zeros(4, device="meta")), r"outcome is on meta but the other inputs are on cpu"),
    ],
)
def test_bad_input_names_the_argument(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        _call(**overrides)


def test_backend_reported():
    assert K.rloo_advantages_backend(torch.zeros(2, 2)) in ("torch", "triton")


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_torch_path_chunked_scan(generator, gamma, chunk):
    """The CPU path's chunked discounted scan (matmul inside chunks, carry across) vs the recurrence."""
    from primeflow.kernels.rloo.op import discounted_scan

    x = torch.randn(3, 37, generator=generator)
    want = torch.zeros(3, 37, dtype=torch.float64)
    carry = torch.zeros(3, dtype=torch.float64)
    for t in reversed(range(37)):
        carry = x[:, t].double() + gamma * carry
        want[:, t] = carry
    assert_close_to_truth(discounted_scan(x, gamma, chunk=chunk), want, torch.float32, what=f"scan C={chunk}")


def test_long_rows_cross_scan_chunks(generator):
    """T > 64: the torch path's scan spans several chunks (both gammas != 1 and equal, then different)."""
    rewards, outcome, mask = random_rloo_inputs(generator, 2, 2, 150)
    for gp, go in ((0.97, 0.97), (0.97, 0.9)):
        kwargs = dict(group_size=2, gamma_process=gp, gamma_outcome=go, reward_norm="none", whiten=False)
        out = K.rloo_advantages(rewards, outcome, mask, **kwargs)
        assert_close_to_truth(
            out,
            truth.rloo_truth(rewards, outcome, mask, **kwargs),
            torch.float32,
            what=f"T=150 gammas {gp}/{go}",
        )
