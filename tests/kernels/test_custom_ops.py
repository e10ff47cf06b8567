"""Every op of primeflow.kernels is a torch.library custom op with a fake implementation (kernels/_library.py).

Three claims, each of which fails without the custom ops:
  * `torch.library.opcheck`: each op's schema, fake implementation and aliasing agree with what its real
    implementation does, on the CPU paths and on the C++ ops;
  * FakeTensorMode with fake CUDA inputs (a CPU machine): every public op returns outputs of the right
    shape, dtype and device without launching a kernel (before, the Triton launch failed on data-less
    tensors, and the label/mask checks read values), and a host tensor among device inputs is refused;
  * torch.compile(fullgraph=True) traces a function that uses every differentiable op, forward and
    backward, without a graph break, and gives the eager values and gradients bitwise (the compiled graph
    calls the same opaque ops; only the glue around them is traced).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from primeflow import kernels as K
from primeflow.kernels.linear_logprob import custom_ops as linear_ops
from primeflow.kernels.logprob import custom_ops as logit_ops
from torch._subclasses.fake_tensor import FakeTensorMode

CUDA = torch.device("cuda", 0)
N, V, H, B, T, K_GROUP = 12, 50, 16, 4, 8, 2


def _prefix_mask(device: torch.device | str = "cpu") -> torch.Tensor:
    lengths = torch.tensor([T, 5, 1, 7], device=device)
    return torch.arange(T, device=device).unsqueeze(0) < lengths.unsqueeze(1)


def _opcheck(op, args: tuple) -> None:
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("with_entropy", [False, True])
def test_logprob_ops_pass_opcheck(with_entropy):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(N, V, generator=gen)
    labels = torch.randint(0, V, (N,), generator=gen)
    hidden, weight = torch.randn(N, H, generator=gen), torch.randn(V, H, generator=gen)
    _opcheck(torch.ops.primeflow.token_stats.default, (logits, labels, 1.0, with_entropy, "torch"))
    _opcheck(torch.ops.primeflow.linear_stats.default, (hidden, weight, labels, 0.7, with_entropy, "cpu"))
    m, ls, ent, _ = logit_ops.token_stats(logits, labels, 1.0, with_entropy, "torch")
    g = torch.randn(N, generator=gen)
    g_ent = torch.randn(N, generator=gen) if with_entropy else None
    _opcheck(torch.ops.primeflow.token_grad.default, (g, g_ent, logits, labels, m, ls, ent, 1.0, "torch"))
    m, ls, ent, _ = linear_ops.linear_stats(hidden, weight, labels, 0.7, with_entropy, "cpu")
    for need_dh, need_dw in ((True, True), (True, False), (False, True)):
        _opcheck(torch.ops.primeflow.linear_grad.default,
                 (g, g_ent, hidden, weight, labels, m, ls, ent, 0.7, need_dh, need_dw, "cpu"))
    if K.HAS_EXTENSION:
        _opcheck(torch.ops.primeflow.token_logprobs_fwd.default, (logits, labels, 1.0, with_entropy))


def test_rl_ops_pass_opcheck():
    gen = torch.Generator().manual_seed(1)
    valid = _prefix_mask()
    lp, old, adv = (torch.randn(B, T, generator=gen) for _ in range(3))
    w_B = torch.rand(B, generator=gen)
    for need_grad in (False, True):
        _opcheck(torch.ops.primeflow.ppo_clip_forward.default, (lp, old, adv, valid, w_B, 0.2, need_grad, False))
    _opcheck(torch.ops.primeflow.prm_logratio_row_sums.default, (lp, old, valid, False))
    _opcheck(torch.ops.primeflow.prm_ce_grad.default, (valid, w_B, False))
    for norm, form in (("batch_norm", "prime"), ("none", "paper")):
        _opcheck(torch.ops.primeflow.rloo_advantages.default,
                 (lp, torch.rand(B, generator=gen), valid, K_GROUP, 1.0, 0.9, norm, form, True, 1.0, 1.0, False))


@pytest.mark.parametrize("seqs", [False, True])
def test_prime_rewards_op_passes_opcheck(seqs):
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, V, (N,), generator=gen)
    hidden, weight = torch.randn(N, H, generator=gen), torch.randn(V, H, generator=gen)
    logits = torch.randn(N, V, generator=gen)
    mask = torch.rand(N, generator=gen) > 0.3
    cu = torch.tensor([0, 5, 5, N]) if seqs else None
    _opcheck(torch.ops.primeflow.prime_token_rewards.default,
             (labels, hidden, weight, logits, None, logits * 0.5, None, 0.05, mask, cu, False))


def _device_inputs(device):
    """Inputs of every public op, created on `device` (call inside FakeTensorMode for fake CUDA)."""
    logits = torch.randn(N, V, device=device, dtype=torch.bfloat16)
    labels = torch.randint(0, V, (N,), device=device)
    hidden = torch.randn(N, H, device=device, dtype=torch.bfloat16)
    weight = torch.randn(V, H, device=device, dtype=torch.bfloat16)
    return logits, labels, hidden, weight, _prefix_mask(device)


def _every_op(logits, labels, hidden, weight, mask):
    device = labels.device
    logp, ent = K.token_logprobs(logits, labels, return_entropy=True)
    lin_logp, lin_ent = K.linear_token_logprobs(hidden, weight, labels, return_entropy=True)
    rewards = K.prime_token_rewards(labels, prm=(hidden, weight), ref=logits, policy=logits, beta=0.05,
                                    mask=labels >= 0, cu_seqlens=torch.tensor([0, 5, N], device=device))
    # narrow, not [:8]: Python indexing of a fake CUDA tensor needs a CUDA device guard (CPU-only torch)
    token_rewards = rewards.reward.narrow(0, 0, B * 2).reshape(B, 2).repeat(1, T // 2)
    adv = K.rloo_advantages(token_rewards, torch.ones(B, device=device), mask, group_size=K_GROUP)
    old = torch.zeros(B, T, device=device)
    loss, stats = K.ppo_clip_loss(token_rewards, old, adv, mask, return_stats=True)
    prm_loss = K.prm_ce_loss(token_rewards, old, mask, torch.full((B,), 0.5, device=device), beta=0.05)
    return dict(logp=logp, ent=ent, lin_logp=lin_logp, lin_ent=lin_ent, prm_logp=rewards.prm_logp,
                reward=rewards.reward, seq_sum=rewards.seq_reward_sum, seq_cnt=rewards.seq_valid_count,
                adv=adv, loss=loss, clipfrac=stats.clipfrac, prm_loss=prm_loss)


EXPECTED = dict(logp=(N,), ent=(N,), lin_logp=(N,), lin_ent=(N,), prm_logp=(N,), reward=(N,), seq_sum=(2,),
                seq_cnt=(2,), adv=(B, T), loss=(), clipfrac=(), prm_loss=())


def test_every_op_traces_on_fake_cuda_tensors():
    """Before the custom ops: the Triton launch on data-less tensors failed, and so did the label checks."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        outputs = _every_op(*_device_inputs(CUDA))
    for name, shape in EXPECTED.items():
        out = outputs[name]
        assert out.device == CUDA, name
        assert tuple(out.shape) == shape, name
        assert out.dtype == (torch.int64 if name == "seq_cnt" else torch.float32), name


def test_fake_cuda_outputs_match_real_cpu_outputs_in_shape():
    """The fake implementations describe what the real ones return (same shapes and dtypes on CPU)."""
    real = _every_op(*_device_inputs("cpu"))
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = _every_op(*_device_inputs(CUDA))
    for name in EXPECTED:
        assert (real[name].shape, real[name].dtype) == (fake[name].shape, fake[name].dtype), name


@pytest.mark.parametrize("host_arg", ["labels", "weight", "mask"])
def test_a_host_tensor_among_fake_cuda_inputs_is_refused(host_arg):
    host = dict(zip(("logits", "labels", "hidden", "weight", "mask"), _device_inputs("cpu"), strict=True))
    with FakeTensorMode(allow_non_fake_inputs=True):
        args = dict(zip(("logits", "labels", "hidden", "weight", "mask"), _device_inputs(CUDA), strict=True))
        args[host_arg] = host[host_arg]
        with pytest.raises((ValueError, RuntimeError), match="on cpu|device"):
            _every_op(**args)


def _differentiable(hidden, weight, labels, logp_BT, old_BT, mask):
    lin = K.linear_token_logprobs(hidden, weight, labels)
    tok, ent = K.token_logprobs(hidden @ weight.T, labels, return_entropy=True)
    adv = K.rloo_advantages(logp_BT.detach(), torch.tensor([1.0, 0.0, 0.0, 1.0]), mask, group_size=K_GROUP)
    ppo = K.ppo_clip_loss(logp_BT, old_BT, adv, mask)
    prm = K.prm_ce_loss(logp_BT, old_BT, mask, torch.tensor([1.0, 0.0, 0.5, 1.0]), beta=0.05)
    return lin, tok, ent, adv, ppo, prm


def test_torch_compile_traces_every_differentiable_op_without_graph_breaks():
    gen = torch.Generator().manual_seed(3)
    leaves = [torch.randn(N, H, generator=gen), torch.randn(V, H, generator=gen) / 4,
              torch.randn(B, T, generator=gen) - 2]
    labels = torch.randint(0, V, (N,), generator=gen)
    old = torch.randn(B, T, generator=gen) - 2
    weights = [torch.randn(n, generator=gen) for n in (N, N, N)]
    compiled = torch.compile(_differentiable, backend="aot_eager", fullgraph=True)

    def run(fn):
        params = [t.clone().requires_grad_() for t in leaves]
        lin, tok, ent, adv, ppo, prm = fn(params[0], params[1], labels, params[2], old, _prefix_mask())
        total = (lin * weights[0]).sum() + (tok * weights[1]).sum() + (ent * weights[2]).sum() + ppo + prm
        total.backward()
        return [lin, tok, ent, adv, ppo, prm] + [p.grad for p in params]

    for eager, traced in zip(run(_differentiable), run(compiled), strict=True):
        assert torch.equal(eager.detach(), traced.detach())


def test_the_checkout_imported_as_a_top_level_kernels_package_leaves_the_ops_intact():
    """From the checkout's root (`python -m ...` puts it on sys.path), transformers' probe of Hugging Face's
    `kernels` package imports this repo's kernels/ folder as `kernels`; re-registering the custom ops there
    replaced the real ones and every later call failed (`vector::reserve`)."""
    code = ("import torch, primeflow.kernels as K, kernels; "
            "h, w = torch.randn(3, 4), torch.randn(5, 4); "
            "print(K.linear_token_logprobs(h, w, torch.tensor([0, 4, 2])).shape, kernels.__all__)")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "torch.Size([3]) []"
