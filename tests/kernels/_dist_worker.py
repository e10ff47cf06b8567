"""Vocab-parallel worker: `python -m torch.distributed.run --nproc_per_node 2 _dist_worker.py <path>`.

Every rank builds the same full inputs from one seed, keeps its contiguous vocab shard, and checks the
sharded op against the unsharded op on the full inputs: log-probs, entropy, and gradients (the logits
shard's gradient is the matching slice; dhidden is the full one, reduced inside the op; dweight is the
shard's slice), for token_logprobs, linear_token_logprobs and linear_prime_rewards (the PRIME rewards,
per-sequence sums and both models' log-probs, with the PRM differentiable). <path> is "cpu" (chunked
PyTorch twins) or "triton" (the Triton kernels, interpreted).
Each rank prints "OK <rank> <checks>" on success and exits non-zero on the first mismatch.
"""

from __future__ import annotations

import os
import sys

PATH = sys.argv[1]
if PATH == "triton":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton.jit decorates the kernels
os.environ.setdefault("PRIMEFLOW_NO_EXT", "1")

import primeflow.kernels as K  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all")
CALLS: list[str] = []


def count_collectives() -> None:
    """Wrap torch.distributed's collectives so the checks can assert how many each op issues."""
    for name in COLLECTIVES:
        original = getattr(dist, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            CALLS.append(_name)
            return _original(*args, **kwargs)

        setattr(dist, name, wrapper)


def close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float = 2e-5, rtol: float = 2e-5) -> str:
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol, equal_nan=True,
                               msg=lambda m: f"rank {dist.get_rank()} {PATH} {name}: {m}")
    return name


def check_token_logprobs(rank: int, world: int, gen: torch.Generator) -> list[str]:
    done = []
    n_rows, vocab = 7, 2 * 67  # each shard 67 columns (odd)
    for dtype in (torch.float32, torch.bfloat16):
        full = (torch.randn(n_rows, vocab, generator=gen) * 3).to(dtype)
        full[1] = -full[1].abs() - 30  # all-negative row (+1e4 offsets: single-process and merge tests)
        full[2, vocab // 2:] = float("-inf")  # one rank's whole shard of this row is padding
        labels = torch.randint(0, vocab, (n_rows,), generator=gen)
        labels[0], labels[2] = vocab - 1, 0
        g, g_ent = torch.randn(n_rows, generator=gen), torch.randn(n_rows, generator=gen)
        x_full = full.clone().requires_grad_()
        logp, ent = K.token_logprobs(x_full, labels, temperature=0.7, return_entropy=True)
        (logp * g + ent * g_ent).sum().backward()
        shard = slice(rank * vocab // world, (rank + 1) * vocab // world)
        x = full[:, shard].contiguous().requires_grad_()
        CALLS.clear()
        s_logp, s_ent = K.token_logprobs(x, labels, temperature=0.7, tp_group=dist.group.WORLD,
                                         return_entropy=True)
        assert CALLS == ["all_gather"], f"forward collectives: {CALLS}"
        CALLS.clear()
        (s_logp * g + s_ent * g_ent).sum().backward()
        assert CALLS == [], f"backward collectives: {CALLS}"
        done.append(f"token {dtype}: 1 all-gather forward, 0 collectives backward")
        done.append(close(f"token logp {dtype}", s_logp, logp))
        done.append(close(f"token entropy {dtype}", s_ent, ent))
        # bf16 grads are each the bf16 rounding of an fp32 value; the sharded and unsharded fp32 values differ
        # by fp32 slop and can round to adjacent bf16 values: one bf16 ulp apart, <= 2^-7 |x| (2^-8 was half
        # of that: it only held when both rounded the same way)
        grad_tol = 1e-5 if dtype == torch.float32 else 2 ** -7 + 1e-5
        done.append(close(f"token dlogits {dtype}", x.grad, x_full.grad[:, shard], atol=1e-6, rtol=grad_tol))
    return done


def check_linear(rank: int, world: int, gen: torch.Generator) -> list[str]:
    done = []
    n_rows, hidden, vocab = 6, 16, 2 * 45
    h0 = torch.randn(n_rows, hidden, generator=gen)
    w0 = torch.randn(vocab, hidden, generator=gen) / 2
    labels = torch.randint(0, vocab, (n_rows,), generator=gen)
    labels[0], labels[1] = vocab - 1, vocab // world - 1  # last column; last column of rank 0's shard
    g, g_ent = torch.randn(n_rows, generator=gen), torch.randn(n_rows, generator=gen)
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    logp, ent = K.linear_token_logprobs(h, w, labels, temperature=0.7, return_entropy=True)
    (logp * g + ent * g_ent).sum().backward()
    shard = slice(rank * vocab // world, (rank + 1) * vocab // world)
    hs, ws = h0.clone().requires_grad_(), w0[shard].clone().requires_grad_()
    CALLS.clear()
    s_logp, s_ent = K.linear_token_logprobs(hs, ws, labels, temperature=0.7, tp_group=dist.group.WORLD,
                                            return_entropy=True)
    assert CALLS == ["all_gather"], f"forward collectives: {CALLS}"
    CALLS.clear()
    (s_logp * g + s_ent * g_ent).sum().backward()
    assert CALLS == ["all_reduce"], f"backward collectives: {CALLS}"
    done.append("linear: 1 all-gather forward, 1 all-reduce (dhidden) backward")
    done.append(close("linear logp", s_logp, logp))
    done.append(close("linear entropy", s_ent, ent))
    done.append(close("linear dhidden (all-reduced in the op)", hs.grad, h.grad, atol=1e-5))
    done.append(close("linear dweight shard", ws.grad, w.grad[shard], atol=1e-5))
    # all ranks hold bitwise-identical merged results (same gathered stats, same merge order)
    gathered = [torch.empty_like(s_logp) for _ in range(world)]
    dist.all_gather(gathered, s_logp.detach())
    assert all(torch.equal(gathered[0], t) for t in gathered), "ranks disagree bitwise"
    done.append("ranks bitwise identical")
    return done


def _prime_bound(z_NV: torch.Tensor) -> torch.Tensor:
    """Allowed |TP=2 - TP=1| per row of a log-prob: both sides are within FP32_LOGIT_ULPS = 8 fp32 ulps of
    the row's logit scale (tests/tolerances.py: ~1 from each GEMM output, the rest from the softmax sums), and
    the scale is max|z_n| plus the log-sum-exp below the max (<= log V)."""
    scale = z_NV.double().abs().amax(1) + torch.log(torch.tensor(float(z_NV.shape[1]), dtype=torch.float64))
    return 2 * 8 * 2.0 ** -24 * scale


def _prime_grad_bounds(h_NH: torch.Tensor, w_VH: torch.Tensor, labels_N: torch.Tensor, d_logp_N: torch.Tensor,
                       logp_bound_N: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed |TP=2 - TP=1| of the PRM's dhidden and dweight, derived (a fixed rtol failed on some seeds:
    dweight sums rows whose logit scale is 30x the others). The logits' gradient is
    dz_nv = a_n (1[v = y_n] - p_nv); the two sides' p differ by p_nv times their log-prob difference
    (<= logp_bound_n), plus a few fp32 roundings of dz itself, plus (bf16) one bf16 ulp where the two fp32
    values round to adjacent bf16 values before the GEMM. The GEMMs then carry those through |h| and |w|,
    plus each side's summation rounding (n terms: n ulps of the sum of magnitudes), and bf16 outputs one
    more bf16 ulp of the result."""
    h, w = h_NH.double(), w_VH.double()
    z = (h_NH.float() @ w_VH.float().T).double()
    p = torch.softmax(z, dim=1)
    onehot = torch.nn.functional.one_hot(labels_N, z.shape[1]).double()
    a = d_logp_N.double().abs()[:, None]
    dz = a * (onehot - p)
    lowp = 2.0 ** -7 if dtype == torch.bfloat16 else 0.0
    dz_err = a * p * logp_bound_N.double()[:, None] + (4 * 2.0 ** -24 + lowp) * dz.abs() + 2.0 ** -126
    dh_allowed = dz_err @ w.abs() + 2 * z.shape[1] * 2.0 ** -24 * (dz.abs() @ w.abs())
    dw_allowed = dz_err.T @ h.abs() + 2 * z.shape[0] * 2.0 ** -24 * (dz.abs().T @ h.abs())
    if lowp:
        dh_allowed, dw_allowed = dh_allowed + lowp * (dz @ w).abs(), dw_allowed + lowp * (dz.T @ h).abs()
    return dh_allowed, dw_allowed


def _within(name: str, got: torch.Tensor, want: torch.Tensor, allowed: torch.Tensor) -> str:
    err = (got.detach().double() - want.detach().double()).abs()
    allowed = allowed.detach().double().expand_as(err)
    bad = err > allowed  # an allowed 0 (an empty sequence's sum) demands equality
    assert not bad.any(), (f"rank {dist.get_rank()} {PATH} {name}: err {err[bad].tolist()} > allowed "
                           f"{allowed[bad].tolist()}")
    used = (err / allowed)[allowed > 0]
    return f"{name} <= {float(used.max()) if used.numel() else 0.0:.2f} of the bound"


def check_prime_rewards(rank: int, world: int, gen: torch.Generator) -> list[str]:
    """linear_prime_rewards with tp_group vs the unsharded call: labels on both shards and on the shard
    boundary, masked tokens, cu_seqlens with an empty sequence; the reference as (hidden, weight) and as
    logits; fp32 and bf16."""
    done = []
    n_rows, hidden, vocab, beta = 13, 16, 2 * 45, 0.3  # each shard 45 columns (odd)
    local = vocab // world
    shard = slice(rank * local, (rank + 1) * local)
    cu = torch.tensor([0, 4, 4, 9, 13], dtype=torch.int32)
    for dtype, ref_form in ((torch.float32, "linear"), (torch.float32, "logits"), (torch.bfloat16, "linear")):
        h0 = torch.randn(n_rows, hidden, generator=gen).to(dtype)
        w0 = (torch.randn(vocab, hidden, generator=gen) / 2).to(dtype)
        rh = torch.randn(n_rows, hidden, generator=gen).to(dtype)
        rw = (torch.randn(vocab, hidden, generator=gen) / 2).to(dtype)
        h0[1] *= 30  # a large logit scale in one row
        labels = torch.randint(0, vocab, (n_rows,), generator=gen)
        labels[:6] = torch.tensor([0, local - 1, local, vocab - 1, local - 1, local])  # edges and the boundary
        mask = torch.rand(n_rows, generator=gen) > 0.3
        mask[2] = False  # a masked token in the first sequence whatever the draw
        coefs = [torch.randn(n_rows, generator=gen), torch.randn(n_rows, generator=gen),
                 torch.randn(cu.shape[0] - 1, generator=gen)]
        ref_full = (rh, rw) if ref_form == "linear" else (rh.float() @ rw.float().T).to(dtype)
        ref_shard = (rh, rw[shard]) if ref_form == "linear" else ref_full[:, shard]
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        want = K.linear_prime_rewards(labels, prm=(h, w), ref=ref_full, beta=beta, mask=mask, cu_seqlens=cu)
        loss = sum((o * c).sum() for o, c in zip((want.prm_logp, want.reward, want.seq_reward_sum), coefs, strict=True))
        loss.backward()
        hs, ws = h0.clone().requires_grad_(), w0[shard].clone().requires_grad_()
        CALLS.clear()
        got = K.linear_prime_rewards(labels, prm=(hs, ws), ref=ref_shard, beta=beta, mask=mask, cu_seqlens=cu,
                                     tp_group=dist.group.WORLD)
        assert CALLS == ["all_gather"], f"prime forward collectives: {CALLS}"
        CALLS.clear()
        loss = sum((o * c).sum() for o, c in zip((got.prm_logp, got.reward, got.seq_reward_sum), coefs, strict=True))
        loss.backward()
        assert CALLS == ["all_reduce"], f"prime backward collectives: {CALLS}"
        what = f"prime {dtype} ref={ref_form}"
        done.append(f"{what}: 1 all-gather forward, 1 all-reduce (dhidden) backward")
        ref_z = ref_full if ref_form == "logits" else rh.float() @ rw.float().T
        lp_prm, lp_ref = _prime_bound(h0.float() @ w0.float().T), _prime_bound(ref_z)
        done.append(_within(f"{what} prm_logp", got.prm_logp, want.prm_logp, lp_prm))
        done.append(_within(f"{what} ref_logp", got.ref_logp, want.ref_logp, lp_ref))
        # reward = beta * (logp_prm - logp_ref) from the same pieces: beta times both log-prob bounds, plus
        # one rounding of the reward itself; masked tokens exactly 0 on both
        r_allowed = beta * (lp_prm + lp_ref) + 2.0 ** -24 * want.reward.double().abs()
        done.append(_within(f"{what} reward", got.reward, want.reward, r_allowed))
        assert not got.reward[~mask].any(), "masked rewards must be exactly 0"
        # a sequence's sum: its tokens' reward bounds plus the two sides' summation orders (n roundings each)
        spans = list(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True))
        s_allowed = torch.stack([(r_allowed[a:b][mask[a:b]].sum()
                                  + 2 * (b - a) * 2.0 ** -24 * want.reward[a:b].double().abs().sum())
                                 for a, b in spans])
        done.append(_within(f"{what} seq_reward_sum", got.seq_reward_sum, want.seq_reward_sum, s_allowed))
        assert torch.equal(got.seq_valid_count, want.seq_valid_count), "seq_valid_count"
        seq_of_token = torch.repeat_interleave(torch.arange(cu.shape[0] - 1), (cu[1:] - cu[:-1]).long())
        d_logp = coefs[0] + beta * mask * (coefs[1] + coefs[2][seq_of_token])  # dloss/dprm_logp per token
        dh_allowed, dw_allowed = _prime_grad_bounds(h0, w0, labels, d_logp, lp_prm, dtype)
        done.append(_within(f"{what} dhidden (all-reduced in the op)", hs.grad, h.grad, dh_allowed))
        done.append(_within(f"{what} dweight shard", ws.grad, w.grad[shard], dw_allowed[shard]))
        assert hs.grad.dtype == dtype and ws.grad.dtype == dtype
        outputs = torch.cat([got.prm_logp, got.ref_logp, got.reward, got.seq_reward_sum]).detach()
        gathered = [torch.empty_like(outputs) for _ in range(world)]
        dist.all_gather(gathered, outputs)
        assert all(torch.equal(gathered[0], t) for t in gathered), f"{what}: ranks disagree bitwise"
        done.append(f"{what}: ranks bitwise identical")
    return done


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    count_collectives()
    gen = torch.Generator().manual_seed(int(os.environ.get("PRIMEFLOW_TEST_SEED", "1234")))
    done = (check_token_logprobs(rank, world, gen) + check_linear(rank, world, gen)
            + check_prime_rewards(rank, world, gen))
    print(f"OK {rank} {PATH}: " + "; ".join(done), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
