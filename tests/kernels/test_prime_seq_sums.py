"""prime_token_rewards(..., cu_seqlens=...): the per-sequence partial sums of the RLOO baseline
(seq_reward_sum, seq_valid_count), computed in the same launch, vs float64 truth.

Both paths: the Triton kernel under TRITON_INTERPRET=1 (BLOCK_N = 16 rows per tile there, so the layouts
below put sequences across one and several tile boundaries, starting and ending exactly on them) and the
chunked CPU path. Truth: a per-sequence Python loop over float64 token rewards of the same (rounded) inputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from reference64 import prime_token_rewards64
from tolerances import ATOL, FP32_LOGIT_ULPS, RTOL, record_bound_use

_spec = importlib.util.spec_from_file_location("_lp_helpers", Path(__file__).with_name("_lp_helpers.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)
_h.ensure_interpreter()
USES_TRITON_INTERPRETER = True  # tests/conftest.py keeps TRITON_INTERPRET=1 for this module's tests only

import primeflow.kernels as K  # noqa: E402
from primeflow.kernels import Backend, reference  # noqa: E402
from primeflow.kernels.linear_logprob import cpu as linear_cpu  # noqa: E402
from primeflow.kernels.linear_logprob.triton_op import tile_config  # noqa: E402
from primeflow.kernels.logprob import torch_op  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

TILE = tile_config(torch.device("cpu"))["BLOCK_N"]  # rows per program under the interpreter
BETA = 0.5  # rewards of O(1): a dropped or doubled token is far outside the sums' tolerance
EPS32 = 2.0**-24


@pytest.fixture(params=["triton", "cpu"])
def path(request, monkeypatch):
    if request.param == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setattr(linear_cpu, "ROWS_PER_CHUNK", 4)
        monkeypatch.setattr(linear_cpu, "COLS_PER_CHUNK", 48)
        monkeypatch.setattr(torch_op, "CHUNK_ELEMENTS", 200)
    expected = Backend.TRITON if request.param == "triton" else Backend.TORCH
    assert K.prime_token_rewards_backend(torch.zeros(1)) is expected
    return request.param


def _layout(name: str, gen: torch.Generator) -> list[int]:
    """Sequence lengths (0 = an empty sequence)."""
    if name == "single":  # S = 1, spanning three tiles
        return [2 * TILE + 5]
    if name == "boundaries":  # empty first/last, starts and ends exactly on tile edges, one over 3 edges
        return [0, TILE, 0, 1, TILE - 1, 3 * TILE + 2, 1, 0]
    lengths = torch.randint(0, 2 * TILE, (9,), generator=gen).tolist()  # "ragged": random, some empty
    return lengths + [0, 40]


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths]).cumsum(0)


def _inputs(n_rows: int, vocab: int, dtype: torch.dtype, gen: torch.Generator):
    hidden, weight, labels = _h.make_linear(n_rows, 24, vocab, dtype, gen)
    ref_logits, _ = _h.make_logits(n_rows, vocab, dtype, gen)
    if n_rows > 3:
        labels[3] = 0  # make_logits' row 3 has a -inf tail; keep its label in the finite half
    return labels, (hidden, weight), ref_logits


def _truth_sums(reward64: torch.Tensor, valid: torch.Tensor, cu: torch.Tensor):
    """Per-sequence float64 sum of the (masked) token rewards, sum of their magnitudes, and count."""
    sums, mags, counts = [], [], []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        sums.append(sum(float(x) for x in reward64[a:b]))
        mags.append(sum(abs(float(x)) for x in reward64[a:b]))
        counts.append(int(valid[a:b].sum()))
    return torch.tensor(sums, dtype=torch.float64), torch.tensor(mags, dtype=torch.float64), torch.tensor(counts)


def _logit_floor(prm, ref, mask: torch.Tensor) -> torch.Tensor:
    """[N] the per-token error floor of an fp32 reward from large logits (tests/tolerances.py,
    FP32_LOGIT_ULPS): each of the PRM's and the reference's (target logit, lse) pairs is rounded by up to a few
    ulps of the row's largest |logit| before the softmax math, and the reward is beta times their difference.
    _inputs' rows with a +-1e4 offset make this ~1e-3 per token (a fixed 2e-5 failed on 2 of 20 seeds)."""
    z_prm = prm[0].double() @ prm[1].double().T
    max_z = z_prm.abs().amax(1) + ref.double().abs().masked_fill(torch.isinf(ref), 0).amax(1)
    return BETA * FP32_LOGIT_ULPS * EPS32 * max_z * mask.double()


def _allowed_sum_error(reward64: torch.Tensor, mag64: torch.Tensor, cu: torch.Tensor, dtype: torch.dtype,
                       logit_floor: torch.Tensor) -> torch.Tensor:
    """How far an fp32 per-sequence sum may be from the float64 one. Two error sources: each token's fp32
    reward (the per-dtype table of tests/tolerances.py plus the large-logit floor, as the per-token tests
    use) and the fp32 summation of n terms (< n ulps of sum |r| for any order)."""
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True))
    per_token = ATOL[dtype] + RTOL[dtype] * reward64.abs() + logit_floor
    token_err = torch.tensor([float(per_token[a:b].sum()) for a, b in bounds], dtype=torch.float64)
    n = torch.tensor([b - a for a, b in bounds], dtype=torch.float64)
    return token_err + n * EPS32 * mag64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["single", "boundaries", "ragged"])
# 33 columns: the one-launch kernel's in-tile partials; 150 (> the interpreter's 64-column split): the
# vocab-split path's segmented scan (sharded.split_forward)
@pytest.mark.parametrize("vocab", [33, 150])
def test_seq_sums_vs_float64(path, layout, dtype, vocab, generator):
    lengths = _layout(layout, generator)
    cu = _cu(lengths)
    n_rows = int(cu[-1])
    labels, prm, ref = _inputs(n_rows, vocab, dtype, generator)
    mask = torch.rand(n_rows, generator=generator) > 0.25
    if layout == "boundaries":
        mask[cu[3]:cu[4]] = False  # a fully masked sequence (length 1)
        mask[cu[5]:cu[5] + 4] = False  # zeros inside the long one, across nothing in particular
    out = K.prime_token_rewards(labels, prm=prm, ref=ref, beta=BETA, mask=mask, cu_seqlens=cu)
    plain = K.prime_token_rewards(labels, prm=prm, ref=ref, beta=BETA, mask=mask)
    for a, b in zip(out[:4], plain[:4], strict=True):  # the per-token outputs do not change
        assert (a is None and b is None) or torch.equal(a, b)

    reward64 = prime_token_rewards64(labels, prm=prm, ref=ref, beta=BETA, mask=mask)[3]
    want_sum, want_mag, want_cnt = _truth_sums(reward64, mask, cu)
    assert out.seq_reward_sum.dtype == torch.float32 and out.seq_reward_sum.shape == (len(lengths),)
    assert out.seq_valid_count.dtype == torch.int64
    assert torch.equal(out.seq_valid_count, want_cnt)
    n = torch.tensor(lengths, dtype=torch.float64)
    allowed = _allowed_sum_error(reward64, want_mag, cu, dtype, _logit_floor(prm, ref, mask))
    err = (out.seq_reward_sum.double() - want_sum).abs()
    record_bound_use(err, allowed)
    assert (err <= allowed).all(), (err, allowed)
    # The reduction alone: against the float64 sum of the op's own fp32 token rewards.
    own_sum, own_mag, _ = _truth_sums(out.reward.double(), mask, cu)
    assert ((out.seq_reward_sum.double() - own_sum).abs() <= n * EPS32 * own_mag).all()
    empty = n == 0
    assert (out.seq_reward_sum[empty] == 0).all() and (out.seq_valid_count[empty] == 0).all()
    if layout == "boundaries":
        assert out.seq_reward_sum[3] == 0 and out.seq_valid_count[3] == 0


def test_matches_reference_and_is_deterministic(path, generator):
    lengths = _layout("ragged", generator)
    cu = _cu(lengths).to(torch.int32)  # int32 cu_seqlens are accepted too
    labels, prm, ref = _inputs(int(cu[-1]), 20, torch.float32, generator)
    mask = torch.rand(labels.shape[0], generator=generator) > 0.2
    policy = (prm[0][:, :16].contiguous(), torch.randn(20, 16, generator=generator))
    out = K.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=BETA, mask=mask, cu_seqlens=cu)
    again = K.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=BETA, mask=mask, cu_seqlens=cu)
    want = reference.prime_token_rewards(labels, prm=prm, ref=ref, policy=policy, beta=BETA, mask=mask,
                                         cu_seqlens=cu)
    assert torch.equal(out.seq_reward_sum, again.seq_reward_sum)
    assert torch.equal(out.seq_valid_count, want.seq_valid_count)
    # Two fp32 implementations, each within its error bound of the float64 sums (some rows of these inputs
    # have logits near 1e4, where one token's fp32 reward is only good to ~1e-5): they may differ by both
    # bounds. A fixed 1e-5 per token failed on 1 seed in the CI run of 2026-11-30 (6e-4 over 40 tokens).
    reward64 = prime_token_rewards64(labels, prm=prm, ref=ref, beta=BETA, mask=mask)[3]
    _, mag64, _ = _truth_sums(reward64, mask, cu.long())
    allowed = 2 * _allowed_sum_error(reward64, mag64, cu.long(), torch.float32, _logit_floor(prm, ref, mask))
    diff = (out.seq_reward_sum.double() - want.seq_reward_sum.double()).abs()
    record_bound_use(diff, allowed)
    assert (diff <= allowed).all(), (diff, allowed)


def test_nan_stays_in_its_sequence(path, generator):
    lengths = [5, TILE, 7, 3]  # the second sequence crosses a tile boundary
    cu = _cu(lengths)
    labels, prm, ref = _inputs(int(cu[-1]), 12, torch.float32, generator)
    ref = ref.clone()
    ref[cu[1] + 2, 4] = float("nan")  # a valid token of sequence 1
    ref[cu[2] + 1, 4] = float("nan")  # a masked token of sequence 2
    mask = torch.ones(labels.shape[0], dtype=torch.bool)
    mask[cu[2] + 1] = False
    out = K.prime_token_rewards(labels, prm=prm, ref=ref, beta=BETA, mask=mask, cu_seqlens=cu)
    assert torch.isnan(out.seq_reward_sum[1])
    assert torch.isfinite(out.seq_reward_sum[[0, 2, 3]]).all()
    assert out.seq_valid_count.tolist() == [5, TILE, 6, 3]


def test_sums_give_the_rloo_baseline(path, generator):
    """The m_i = seq_reward_sum / seq_valid_count of a flattened [B, T] batch (cu_seqlens = arange(B+1)*T,
    the [B, T] prefix mask) is the baseline rloo_advantages uses: count equals its per-row valid count,
    m_i its per-row mean, and rloo's Eq. 5 return at t = 0, sum_t r_t - n_i*(sum_j m_j - m_i)/(K-1)
    (no norm, no whitening, outcome 0), is reproduced from the sums alone."""
    G, Kg, T = 3, 4, 2 * TILE - 3  # rows of T tokens: row starts drift across tile edges
    B = G * Kg
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[0], lengths[1] = 1, T
    mask_BT = torch.arange(T)[None, :] < lengths[:, None]
    labels, prm, ref = _inputs(B * T, 25, torch.float32, generator)
    cu = torch.arange(B + 1) * T
    out = K.prime_token_rewards(labels, prm=prm, ref=ref, beta=BETA, mask=mask_BT.flatten(), cu_seqlens=cu)
    m_B = out.seq_reward_sum / out.seq_valid_count
    r_BT = out.reward.view(B, T)

    assert torch.equal(out.seq_valid_count, mask_BT.sum(-1))
    rloo_mean_B = torch.where(mask_BT, r_BT, 0.0).sum(-1) / mask_BT.sum(-1)  # rloo's m_i (kernels/rloo/ref.py)
    torch.testing.assert_close(m_B, rloo_mean_B, atol=1e-6, rtol=1e-5)

    adv = K.rloo_advantages(r_BT, torch.zeros(B), mask_BT, group_size=Kg, reward_norm="none", form="paper",
                            whiten=False)
    total = m_B.view(G, Kg).sum(-1).repeat_interleave(Kg)
    from_sums = out.seq_reward_sum - out.seq_valid_count * (total - m_B) / (Kg - 1)
    scale = (out.seq_valid_count * total.abs()).max().item() + 1.0
    torch.testing.assert_close(adv[:, 0], from_sums, atol=1e-5 * scale, rtol=1e-5)


def test_no_sequences_and_no_rows(path):
    empty = torch.zeros(0, 7)
    out = K.prime_token_rewards(torch.zeros(0, dtype=torch.int64), prm=empty, ref=empty, beta=1.0,
                                cu_seqlens=torch.zeros(3, dtype=torch.int64))
    assert out.seq_reward_sum.tolist() == [0.0, 0.0] and out.seq_valid_count.tolist() == [0, 0]


@pytest.mark.parametrize("cu, match", [
    (torch.tensor([0, 2]), r"end at N=3"),
    (torch.tensor([1, 3]), r"start at 0"),
    (torch.tensor([0, 2, 1, 3]), "nondecreasing"),
    (torch.tensor([0.0, 3.0]), "int32 or int64"),
    (torch.tensor([[0, 3]]), r"1-D integer tensor \[S\+1\]"),
    (torch.zeros(0, dtype=torch.int64), r"1-D integer tensor \[S\+1\]"),
])
def test_bad_cu_seqlens_raises_value_error(cu, match):
    logits = torch.zeros(3, 5)
    with pytest.raises(ValueError, match=match):
        K.prime_token_rewards(torch.tensor([0, 1, 2]), prm=logits, ref=logits, beta=0.1, cu_seqlens=cu)
