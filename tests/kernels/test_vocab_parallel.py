"""Vocab-parallel log-probs: the merge of per-piece stats (in process), and the sharded ops under torchrun
with 2 processes over gloo vs the unsharded ops (tests/kernels/_dist_worker.py does the checking)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from primeflow.kernels.vocab_parallel import local_labels, merge_pieces
from reference64 import token_logprobs64


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


def test_local_labels():
    got = local_labels(torch.tensor([0, 9, 10, 19, 20]), 10, 10)
    assert got.tolist() == [-1, -1, 0, 9, -1]


@pytest.mark.multiproc
@pytest.mark.parametrize("path", ["cpu", "triton"])
def test_sharded_equals_unsharded_under_torchrun(path, seed):
    worker = Path(__file__).with_name("_dist_worker.py")
    env = dict(os.environ, PRIMEFLOW_TEST_SEED=str(seed), OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the worker sets it itself for the triton path
    with socket.socket() as sock:  # a free port (torchrun's --master_port 0 hangs the gloo rendezvous here)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(worker), path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stdout.count("OK ") == 2, proc.stdout
