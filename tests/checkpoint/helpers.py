"""Shared by the in-process and torchrun checkpoint tests: build PRIME-like model sets, train them a little,
snapshot everything a resume must restore, and compare snapshots bitwise."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from primeflow.models import ModelConfig, build_model, load_hf_checkpoint


def build_set(ckpt: Path, *, init_seed: int, load: bool = True, roles=("policy", "prm")):
    """{role: model}, {role: AdamW}, {role: LambdaLR}. With load=False the weights are a fresh random init
    (a different `init_seed` gives different weights: the target of a checkpoint load must not already
    equal the source)."""
    cfg = ModelConfig.from_hf(ckpt)
    torch.manual_seed(init_seed)
    models, opts, scheds = {}, {}, {}
    for role in roles:
        model = build_model(cfg, role=role)
        if load:
            load_hf_checkpoint(model, ckpt)
        models[role] = model
        opts[role] = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
        scheds[role] = torch.optim.lr_scheduler.LambdaLR(opts[role], lambda s: 1.0 / (1.0 + 0.5 * s))
    return models, opts, scheds


def train_step(models, opts, scheds, *, seed: int, vocab: int, batch=2, seq=12) -> None:
    """One deterministic update of every model (fixed data from `seed`; dropout is off in these models).
    With PP > 1 a stage cannot run the model alone, so gradients are seeded random tensors instead (the
    checkpoint only cares that parameters and AdamW moments are non-trivial and deterministic)."""
    from megatron.core import parallel_state

    g = torch.Generator().manual_seed(seed)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        for role, model in models.items():
            opts[role].zero_grad(set_to_none=True)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            opts[role].step()
            scheds[role].step()
        return
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    pos = torch.arange(seq).expand(batch, seq)
    for role, model in models.items():
        opts[role].zero_grad(set_to_none=True)
        logp = model(input_ids=ids, position_ids=pos, attention_mask=None, labels=torch.roll(ids, -1, 1))
        (-logp.mean()).backward()
        opts[role].step()
        scheds[role].step()


def snapshot(models, opts, scheds) -> dict:
    """Deep copies of parameters, optimizer states and scheduler states."""
    out = {"params": {}, "opt": {}, "sched": {}}
    for role, model in models.items():
        out["params"][role] = {n: p.detach().clone() for n, p in model.named_parameters()}
        sd = opts[role].state_dict()
        out["opt"][role] = {
            "state": {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": [dict(g) for g in sd["param_groups"]],
        }
        out["sched"][role] = {k: v for k, v in scheds[role].state_dict().items() if k != "lr_lambdas"}
    return out


def assert_snapshots_equal(a: dict, b: dict) -> int:
    """Bitwise equality of two snapshots; returns the number of tensors compared."""
    n = 0
    assert a["params"].keys() == b["params"].keys()
    for role in a["params"]:
        pa, pb = a["params"][role], b["params"][role]
        assert pa.keys() == pb.keys(), role
        for name in pa:
            assert pa[name].dtype == pb[name].dtype and torch.equal(pa[name], pb[name]), f"{role}.{name} differs"
            n += 1
        sa, sb = a["opt"][role], b["opt"][role]
        assert sa["param_groups"] == sb["param_groups"], f"{role} optimizer param_groups differ"
        assert sa["state"].keys() == sb["state"].keys() and len(sa["state"]) > 0, f"{role} optimizer state"
        for i in sa["state"]:
            assert sa["state"][i].keys() == sb["state"][i].keys()
            for k, v in sa["state"][i].items():
                assert torch.equal(v, sb["state"][i][k]), f"{role} optimizer state[{i}][{k}] differs"
                n += 1
        assert a["sched"][role] == b["sched"][role], f"{role} scheduler state differs"
    return n


def draw_streams(gen: torch.Generator | None = None) -> dict:
    """A few values from every RNG stream a checkpoint restores (and from `gen`)."""
    out = {"python": [random.random() for _ in range(3)], "numpy": np.random.rand(3).tolist(),
           "numpy_gauss": float(np.random.randn()), "torch": torch.rand(3).tolist()}
    if gen is not None:
        out["generator"] = torch.rand(3, generator=gen).tolist()
    return out


def perturb_streams(gen: torch.Generator | None = None) -> None:
    """Move every stream away from the saved point (a load that restores nothing then fails the test)."""
    random.random()
    np.random.rand(5)
    torch.rand(7)
    if gen is not None:
        torch.rand(11, generator=gen)
