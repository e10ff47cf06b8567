"""Grouped program order of the fused-head kernels (kernel.py's _grouped_tile, 1-D grids): every (row block,
vocab split / tile) pair is computed exactly once, and the results are bitwise those of the former
rows-fastest order, under TRITON_INTERPRET=1.

Why this proves it: (1) a probe kernel calling _grouped_tile counts, with atomics, how often each pair is
produced over the launcher's grid: each exactly once, for adversarial grids. (2) The real launchers run with
GROUP_N in {1, 2, 3, 1000}; GROUP_N >= the number of row blocks *is* the rows-fastest mapping of the old
2-D grids (pid % row blocks, pid // row blocks; checked by the probe), and every run must agree bit for bit
with it, with outputs NaN-poisoned (torch.empty filled with NaN) so a pair never computed cannot pass. (3)
The same outputs against float64 references, so the agreeing values are also right.

Shapes (interpreter tiles: BLOCK_N 16, BLOCK_V 32, COLS_PER_SPLIT 64): N not a multiple of BLOCK_N, a single
row block, row-block counts not multiples of GROUP_N, V not a multiple of the split or tile width, V = 1.
Inputs are dyadic (tests/kernels/_lp_helpers.make_dyadic_linear) with T = 0.5, so logits are exact in fp32
and bf16 whatever the BLAS summation order, and the float64 references see the same logits.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from poisoned import nan_poisoned
from tolerances import P_RELATIVE_FLOOR, assert_close_to_truth

_spec = importlib.util.spec_from_file_location("_lp_helpers", Path(__file__).with_name("_lp_helpers.py"))
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)
_h.ensure_interpreter()
USES_TRITON_INTERPRETER = True  # tests/conftest.py keeps TRITON_INTERPRET=1 for this module's tests only

from primeflow.kernels import traffic_model  # noqa: E402
from primeflow.kernels.linear_logprob import triton_op  # noqa: E402
from primeflow.kernels.linear_logprob.kernel import _grouped_tile  # noqa: E402
from primeflow.kernels.linear_logprob.tiles import AUTOTUNE_TILES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf/nan warnings in masked lanes

CPU_TILES = triton_op.tile_config(torch.device("cpu"))
TEMPERATURE = 0.5  # 1/T = 2: scaling keeps the dyadic logits exact
ROWS_FASTEST = 1000  # GROUP_N above any row-block count below: the former order


@triton.jit
def _order_probe(count_ptr, order_ptr, n_row_blocks, n_cols, GROUP_N: tl.constexpr):
    pid = tl.program_id(0)
    rb, col = _grouped_tile(pid, n_row_blocks, n_cols, GROUP_N)
    ok = (rb >= 0) & (rb < n_row_blocks) & (col >= 0) & (col < n_cols)
    tl.atomic_add(count_ptr + rb * n_cols + col, 1, mask=ok)
    tl.store(order_ptr + 2 * pid, rb)
    tl.store(order_ptr + 2 * pid + 1, col)


def _probe(n_row_blocks: int, n_cols: int, group_n: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    count = torch.zeros((n_row_blocks, n_cols), dtype=torch.int32)
    order = torch.full((n_row_blocks * n_cols, 2), -1, dtype=torch.int32)
    _order_probe[(n_row_blocks * n_cols,)](count, order, n_row_blocks, n_cols, GROUP_N=group_n)
    return count, [tuple(p) for p in order.tolist()]


# (row blocks, columns, GROUP_N): one row block; fewer row blocks than a group; a partial last group; exact
# groups; one column; GROUP_N 1 (columns fastest)
GRIDS = [(1, 1, 3), (1, 5, 3), (2, 4, 3), (4, 3, 3), (7, 2, 3), (6, 4, 3), (6, 4, 4), (9, 1, 2), (5, 3, 1),
         (5, 3, 8)]


@pytest.mark.parametrize("n_rb,n_cols,group_n", GRIDS)
def test_grouped_tile_visits_every_pair_exactly_once(n_rb, n_cols, group_n):
    count, order = _probe(n_rb, n_cols, group_n)
    assert torch.equal(count, torch.ones_like(count)), count
    assert order == traffic_model.grouped_order(n_rb, n_cols, group_n)  # the traffic model's mirror
    for pid, (rb, _) in enumerate(order):  # a group's programs stay inside its GROUP_N row blocks
        assert rb // group_n == pid // (group_n * n_cols)
    if group_n >= n_rb:  # the former 2-D grid, row blocks fastest
        assert order == [(pid % n_rb, pid // n_rb) for pid in range(n_rb * n_cols)]
    else:  # rows fastest inside a group: the group's first programs walk its row blocks at column 0
        assert order[:group_n] == [(rb, 0) for rb in range(group_n)]


# bf16 once: under the interpreter it goes through the same fp32 dot, so it checks loads and casts only
CASES = [(1, 16, 1, torch.float32), (5, 24, 203, torch.float32), (53, 40, 203, torch.float32),
         (83, 33, 130, torch.float32), (83, 33, 130, torch.bfloat16), (40, 17, 97, torch.float32),
         (112, 24, 64, torch.float32)]
GROUPS = [1, 2, 3, ROWS_FASTEST]


def _poison_empty(monkeypatch) -> None:
    """Every float buffer the launchers allocate starts as NaN, so an unwritten element shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(fn):
        def wrapped(*args, **kwargs):
            t = fn(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t
        return wrapped

    monkeypatch.setattr(torch, "empty", poisoned(empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(empty_like))


def _run(monkeypatch, group_n: int, hidden, weight, labels, g, g_ent, tiles: dict = CPU_TILES):
    """(per-split partials m/ls/ent/zt [splits, N], dz [N, V]) through the real launchers at GROUP_N."""
    with monkeypatch.context() as mp:
        mp.setattr(triton_op, "tile_config", lambda device: tiles | {"GROUP_N": group_n})
        captured = {}
        merge = triton_op.merge_pieces

        def recording_merge(m_KN, ls_KN, ent_KN, zt_KN):
            captured["parts"] = tuple(t.clone() for t in (m_KN, ls_KN, ent_KN, zt_KN))
            return merge(m_KN, ls_KN, ent_KN, zt_KN)

        mp.setattr(triton_op, "merge_pieces", recording_merge)
        _poison_empty(mp)
        triton_op.linear_stats(hidden, weight, labels, TEMPERATURE, True)
        m_N, ls_N, ent_N = _truth_row_stats(hidden, weight, labels)
        dz_NV = nan_poisoned(tuple(labels.shape) + (weight.shape[0],))
        triton_op.triton_dz_fn(hidden, weight, None, None, labels, m_N, ls_N, ent_N, g, g_ent,
                               1.0 / TEMPERATURE, dz_NV)
    return captured["parts"], dz_NV


def _logits64(hidden, weight) -> torch.Tensor:
    return hidden.double() @ weight.double().T / TEMPERATURE


def _truth_row_stats(hidden, weight, labels):
    """fp32 (max, log sum exp(z - max), entropy) of each row: the dz kernel's inputs, fixed for all orders."""
    z = _logits64(hidden, weight)
    m = z.amax(1)
    e = torch.exp(z - m[:, None])
    s = e.sum(1)
    ent = torch.log(s) - (e * (z - m[:, None])).sum(1) / s
    return m.float(), torch.log(s).float(), ent.float()


def _truth_partials(hidden, weight, labels, width: int = CPU_TILES["COLS_PER_SPLIT"]) -> tuple[torch.Tensor, ...]:
    """float64 per-split (max, log sum exp(z - max), entropy, z_label or 0), [splits, N]."""
    z = _logits64(hidden, weight)
    out = []
    for lo in range(0, z.shape[1], width):
        zs = z[:, lo:lo + width]
        m = zs.amax(1)
        e = torch.exp(zs - m[:, None])
        s = e.sum(1)
        ent = torch.log(s) - (e * (zs - m[:, None])).sum(1) / s
        inside = (labels >= lo) & (labels < lo + zs.shape[1])
        zt = torch.where(inside, z.gather(1, labels[:, None]).squeeze(1), 0.0)
        out.append(torch.stack([m, torch.log(s), ent, zt]))
    return tuple(torch.stack(out, 1))  # 4 x [splits, N]


def _truth_dz(hidden, weight, labels, m_N, ls_N, ent_N, g, g_ent):
    """float64 dz from the same fp32 (max, lse, entropy) the kernel is given, and the allowed extra error:
    fp32 p = exp(z - m - ls) is known to ~1e-7 relative (P_RELATIVE_FLOOR), which the (onehot - p) and
    (log p + H) differences do not shrink."""
    z = _logits64(hidden, weight)
    log_p = z - m_N.double()[:, None] - ls_N.double()[:, None]
    p = torch.exp(log_p)
    onehot = torch.nn.functional.one_hot(labels, z.shape[1]).double()
    gd, ged = g.double()[:, None], g_ent.double()[:, None]
    dz = (gd * (onehot - p) - ged * p * (log_p + ent_N.double()[:, None])) / TEMPERATURE
    extra = P_RELATIVE_FLOOR * p * (gd.abs() + ged.abs() * (log_p.abs() + ent_N.double().abs()[:, None] + 1))
    return dz, extra / TEMPERATURE


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("N,H,V,dtype", CASES)
def test_grouped_order_is_bitwise_the_rows_fastest_order(monkeypatch, N, H, V, dtype, generator):
    hidden, weight, labels = _h.make_dyadic_linear(N, H, V, generator)
    hidden, weight = hidden.to(dtype), weight.to(dtype)  # dyadic: exact in bf16 too
    g, g_ent = torch.randn(N, generator=generator), torch.randn(N, generator=generator)
    n_rb = math.ceil(N / CPU_TILES["BLOCK_N"])
    assert n_rb < ROWS_FASTEST
    runs = {gn: _run(monkeypatch, gn, hidden, weight, labels, g, g_ent) for gn in GROUPS}
    parts0, dz0 = runs[ROWS_FASTEST]
    for gn, (parts, dz) in runs.items():
        for name, a, b in zip(("max", "lse", "entropy", "z_label"), parts, parts0, strict=True):
            assert not torch.isnan(a).any(), f"GROUP_N={gn}: {name} partial never written"
            assert torch.equal(_bits(a), _bits(b)), f"GROUP_N={gn}: {name} partials differ from rows-fastest"
        assert not torch.isnan(dz).any(), f"GROUP_N={gn}: dz element never written"
        assert torch.equal(_bits(dz), _bits(dz0)), f"GROUP_N={gn}: dz differs from rows-fastest"
    for name, got, truth in zip(("max", "lse", "entropy", "z_label"), parts0,
                                _truth_partials(hidden, weight, labels), strict=True):
        assert_close_to_truth(got, truth, torch.float32, what=f"split {name}")
    m_N, ls_N, ent_N = _truth_row_stats(hidden, weight, labels)
    t_dz, extra = _truth_dz(hidden, weight, labels, m_N, ls_N, ent_N, g, g_ent)
    assert_close_to_truth(dz0, t_dz, torch.float32, grad=True, what="dz", extra_atol=extra)


@pytest.mark.parametrize("tile", sorted(set().union(*AUTOTUNE_TILES.values()), key=lambda t: t.label()),
                         ids=lambda t: t.label())
def test_every_autotune_tile_computes_the_float64_truth(monkeypatch, tile, generator):
    """The CUDA autotune candidates (tiles.py, forward and backward) run the same kernel code at tiles up to
    128 x 256 x 64 that the
    small interpreter tiles never reach: each one through the real launchers (NaN-poisoned outputs) against
    float64, at a shape with partial row blocks, a partial K step, a partial last split and a partial last
    tile inside it (splits two tiles wide), and its GROUP_N with fewer row blocks than a group."""
    tiles = dict(tile.constexprs(), num_warps=tile.num_warps, COLS_PER_SPLIT=2 * tile.block_v)
    n_rows, hidden_size = 2 * tile.block_n + 7, tile.block_h + 16
    vocab = 2 * tiles["COLS_PER_SPLIT"] + tile.block_v + 5
    hidden, weight, labels = _h.make_dyadic_linear(n_rows, hidden_size, vocab, generator)
    g, g_ent = torch.randn(n_rows, generator=generator), torch.randn(n_rows, generator=generator)
    parts, dz = _run(monkeypatch, tile.group_n, hidden, weight, labels, g, g_ent, tiles)
    truth = _truth_partials(hidden, weight, labels, tiles["COLS_PER_SPLIT"])
    for name, got, want in zip(("max", "lse", "entropy", "z_label"), parts, truth, strict=True):
        assert got.shape == want.shape == (3, n_rows)
        assert_close_to_truth(got, want, torch.float32, what=f"{tile.label()} split {name}")
    m_N, ls_N, ent_N = _truth_row_stats(hidden, weight, labels)
    t_dz, extra = _truth_dz(hidden, weight, labels, m_N, ls_N, ent_N, g, g_ent)
    assert_close_to_truth(dz, t_dz, torch.float32, grad=True, what=f"{tile.label()} dz", extra_atol=extra)
