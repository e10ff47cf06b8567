"""Checkpoints for the rollout tests, written by the parent pytest process and read by the vLLM children.

  base        make_tiny_checkpoint (Qwen2, hidden 256, 2 layers, V 259) from the run's seed
  perturbed_k base with every tensor moved by N(0, (0.2 * its std)^2): "the trainer after some updates";
              large enough that vLLM-before-sync and the trainer disagree by O(1) nats per token
  one_layer   base's config with 1 layer (a policy that lacks model.layers.1.*)
  wide_mlp    base's config with intermediate_size 640 (every mlp tensor has another shape)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from primeflow.models import make_tiny_checkpoint
from safetensors.torch import load_file, save_file


def perturbed_copy(src: Path, dst: Path, seed: int, scale: float = 0.2) -> Path:
    """Copy checkpoint `src` to `dst` with Gaussian noise of `scale` x each tensor's std added."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copyfile(f, dst / f.name)
    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(str(src / "model.safetensors"))
    out = {}
    for name in sorted(tensors):
        t = tensors[name]
        std = float(t.float().std()) if t.numel() > 1 else 1.0
        out[name] = (t.float() + scale * max(std, 1e-3) * torch.randn(t.shape, generator=gen)).to(t.dtype)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def make_all(root: Path, seed: int, n_perturbed: int = 3) -> dict[str, Path]:
    base = make_tiny_checkpoint(root / "base", seed=seed)
    out = {"base": base}
    for k in range(1, n_perturbed + 1):
        out[f"perturbed_{k}"] = perturbed_copy(base, root / f"perturbed_{k}", seed + 1000 * k)
    out["one_layer"] = make_tiny_checkpoint(root / "one_layer", seed=seed, num_hidden_layers=1)
    out["wide_mlp"] = make_tiny_checkpoint(root / "wide_mlp", seed=seed, intermediate_size=640)
    return out
