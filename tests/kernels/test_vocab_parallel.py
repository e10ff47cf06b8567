"""Vocab-parallel log-probs: the merge of per-piece stats (in process), and the sharded ops under torchrun
with 2 processes over gloo vs the unsharded ops (tests/kernels/_dist_worker.py does the checking: token_logprobs,
linear_token_logprobs and linear_prime_rewards).

merge_pieces' sums are a pairwise tree (vocab_parallel.tree_sum), not a left fold: the tests compare it with
float64 truth under explicit tolerances, never with a separately computed fold bitwise."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from child_env import fresh_world_env
from primeflow.kernels.vocab_parallel import local_labels, merge_pieces, tree_sum
from reference64 import token_logprobs64
from torch.utils._python_dispatch import TorchDispatchMode


def _piece_stats64(z: torch.Tensor, labels: torch.Tensor, lo: int, hi: int):
    """(m, ls, entropy, z_label or 0) of columns [lo, hi), float64, written independently of the kernels."""
    zp = z[:, lo:hi]
    m = zp.max(1).values
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # empty piece: m = -inf, ls = -inf
    ls = torch.log(torch.exp(zp - m_safe[:, None]).sum(1))
    q = torch.exp(zp - (m_safe + ls)[:, None])
    ent = -(torch.where(q > 0, q * torch.log(q), torch.zeros_like(q))).sum(1)
    inside = (labels >= lo) & (labels < hi)
    zt = torch.where(inside, z.gather(1, labels[:, None]).squeeze(1), torch.zeros_like(m))
    return m, ls, ent, zt


@pytest.mark.parametrize("cuts", [[0, 50], [0, 1, 50], [0, 17, 18, 40, 50]])
def test_merge_pieces_is_exact(cuts, generator):
    z = torch.randn(6, 50, generator=generator, dtype=torch.float64) * 4
    z[1] += 1e4
    z[2, 18:] = float("-inf")  # later pieces of this row are empty (m = ls = -inf)
    labels = torch.randint(0, 18, (6,), generator=generator)
    bounds = zip(cuts[:-1], cuts[1:], strict=True)
    stats = [_piece_stats64(z, labels, lo, hi) for lo, hi in bounds]
    m, ls, ent, zt = merge_pieces(*(torch.stack(s) for s in zip(*stats, strict=True)))
    t_logp, t_ent = token_logprobs64(z, labels)
    torch.testing.assert_close((zt - m) - ls, t_logp, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ent, t_ent, atol=1e-10, rtol=1e-10)


def _fp32_pieces(k: int, gen: torch.Generator):
    """(float64 logits [6, V], labels, the fp32 pieces of k cuts) with an offset row and an empty tail."""
    z = torch.randn(6, 10 * k, generator=gen, dtype=torch.float64) * 4
    z[1] += 1e4
    z[2, 10 * (k // 2):] = float("-inf")  # the second half of this row's pieces are empty
    labels = torch.randint(0, 10 * (k // 2), (6,), generator=gen)
    cuts = range(0, 10 * k + 1, 10)
    stats = [_piece_stats64(z, labels, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    return z, labels, [torch.stack(s).float() for s in zip(*stats, strict=True)]


def _merge64(m_KN, ls_KN, ent_KN, zt_KN):
    """(logp, entropy) in float64 of the given pieces: lse = log sum_r exp(m_r + ls_r), H = sum_r a_r (ent_r +
    lse - lse_r) with a_r = exp(lse_r - lse), written from the formulas (no merge_pieces code)."""
    m_KN, ls_KN, ent_KN, zt_KN = (t.double() for t in (m_KN, ls_KN, ent_KN, zt_KN))
    lse_KN = m_KN + ls_KN  # exact enough in float64 even at 1e4
    lse_N = torch.logsumexp(lse_KN, dim=0)
    a_KN = torch.exp(lse_KN - lse_N)
    ent_N = torch.where(a_KN > 0, a_KN * (ent_KN + lse_N - lse_KN), torch.zeros_like(a_KN)).sum(0)
    return zt_KN.sum(0) - lse_N, ent_N


def test_merge_of_fp32_pieces_vs_float64(generator):
    """K = 38 fp32 pieces (a 151936 vocabulary in 4096-column splits) against the float64 merge of the same
    pieces: only the merge's own rounding is measured. Allowed: TOL_ULPS fp32 ulps of each result's scale,
    |logp - truth| <= TOL_ULPS * 2^-24 * (|z_label - m| + ls + 1): the shares exp((m_r - m) + ls_r) ~2 ulps
    each, the tree sum ceil(log2 38) = 6 more, the log and the final subtractions ~3; the entropy likewise
    against (|H| + ls + 1). Measured over 50 seeds: logp <= 0.6 ulps, entropy <= 2.8 ulps of the scale."""
    tol_ulps = 8
    _, _, (m_KN, ls_KN, ent_KN, zt_KN) = _fp32_pieces(38, generator)
    m, ls, ent, zt = merge_pieces(m_KN, ls_KN, ent_KN, zt_KN)
    t_logp, t_ent = _merge64(m_KN, ls_KN, ent_KN, zt_KN)
    logp = (zt.double() - m.double()) - ls.double()
    err, scale = (logp - t_logp).abs(), (zt.double() - m.double()).abs() + ls.double().abs() + 1
    assert (err <= tol_ulps * 2.0 ** -24 * scale).all(), err / (2.0 ** -24 * scale)
    err, scale = (ent.double() - t_ent).abs(), t_ent.abs() + ls.double().abs() + 1
    assert (err <= tol_ulps * 2.0 ** -24 * scale).all(), err / (2.0 ** -24 * scale)


def test_tree_sum_is_pairwise_and_exact_on_small_integers():
    x_KN = torch.arange(1.0, 8.0).repeat(3, 1).T.contiguous()  # K = 7 (padded to 8), N = 3
    assert tree_sum(x_KN).tolist() == [28.0, 28.0, 28.0]
    assert tree_sum(x_KN[:1]).tolist() == [1.0, 1.0, 1.0]
    # the pairing is ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + 0)): with 2^-24 at x2 and x6 the tree adds
    # them first and keeps 1 + 2^-23, where a left fold rounds 1 + 2^-24 back to 1 twice (ties to even)
    y = torch.tensor([[1.0], [0.0], [2.0 ** -24], [0.0], [0.0], [0.0], [2.0 ** -24]])
    assert tree_sum(y).item() == 1.0 + 2.0 ** -23


def test_merge_is_batch_invariant_bitwise(generator):
    _, _, pieces = _fp32_pieces(38, generator)
    full = merge_pieces(*pieces)
    rows = torch.tensor([4, 1])
    part = merge_pieces(*(p[:, rows] for p in pieces))
    for a, b in zip(full, part, strict=True):
        assert torch.equal(a[rows], b)


class _CountKernels(TorchDispatchMode):
    """Counts the aten ops that write a new tensor (views excluded): the kernels a call launches."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not any(r.alias_info is not None for r in func._schema.returns):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_merge_launches_a_fixed_number_of_kernels(generator):
    """At K = 38 the left folds launched ~131 ops (37 adds per sum); the tree ~43 (6 adds per sum)."""
    _, _, pieces = _fp32_pieces(38, generator)
    with _CountKernels() as counted:
        merge_pieces(*pieces)
    assert counted.count <= 48, counted.count


def test_local_labels():
    got = local_labels(torch.tensor([0, 9, 10, 19, 20]), 10, 10)
    assert got.tolist() == [-1, -1, 0, 9, -1]


@pytest.mark.multiproc
@pytest.mark.parametrize("path", ["cpu", "triton"])
def test_sharded_equals_unsharded_under_torchrun(path, seed):
    worker = Path(__file__).with_name("_dist_worker.py")
    # no inherited world (RANK, MASTER_PORT, ...) nor TRITON_INTERPRET: the worker sets it for the triton path
    env = fresh_world_env(PRIMEFLOW_TEST_SEED=str(seed), OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port (torchrun's --master_port 0 hangs the gloo rendezvous here)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(worker), path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stdout.count("OK ") == 2, proc.stdout
