"""Activation recompute and sequence parallelism (models/memory.py) change no result, proven at TP=2 under
torchrun over gloo through the trainer's path (megatron-core DDP, finalize_model_grads): see
memory_parity.py for what is measured.

* Recompute (full uniform, full block, selective core_attn + mlp) reruns the same kernels on the same inputs:
  log-probs and every gradient bitwise equal to no recompute, and the attention cores / MLPs really run a
  second time in backward (counted by forward hooks), so the check cannot pass with recompute silently off.
* Sequence parallelism: each layer sees half the (padded) tokens; the forward is bitwise equal. In backward
  only the RMSNorm weights' gradients may differ: each rank sums its half of the tokens and
  finalize_model_grads adds the halves, a different summation order of the same t fp32 terms, which differs
  by at most 2 (t - 1) u sum|terms|. Bounded here relative to the parameter's largest gradient, assuming
  sum|terms| is of its order (no cancellation; measured: 2 u). Without that all-reduce the norm gradients
  would be off by O(1) (one rank's half), which this bound rejects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from primeflow.models import make_tiny_checkpoint
from primeflow.models.memory import ActivationMemory

_SCRIPT = Path(__file__).resolve().parent / "memory_parity.py"
FP32_UNIT_ROUNDOFF = 2.0 ** -24
PACKED_TOKENS_AT_MOST = 36  # memory_parity.py scores 3 rows of at most 12 tokens


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("memory")
    # V=259 is odd: TP=2 pads the vocabulary (padded-head path); V=320 divides: the fused log-prob head.
    ckpts = [make_tiny_checkpoint(root / "qwen2_untied", seed=11),
             make_tiny_checkpoint(root / "llama_tied", seed=12, architecture="llama", tie_word_embeddings=True,
                                  vocab_size=320)]
    out = root / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(_SCRIPT),
           "--tp", "2", "--seed", "5", "--out", str(out), *map(str, ckpts)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def _variants(result: dict):
    for rank, per_ckpt in enumerate(result["ranks"]):
        for ckpt, variants in per_ckpt.items():
            yield rank, ckpt, variants


@pytest.mark.multiproc
@pytest.mark.parametrize("variant,extra_runs", [("full_uniform", 2), ("full_block", 1), ("selective", 2)])
def test_recompute_is_bitwise_and_really_recomputes(result, variant, extra_runs):
    for rank, ckpt, variants in _variants(result):
        base, got = variants["baseline"]["ran"], variants[variant]
        where = f"rank {rank} {ckpt} {variant}"
        assert got["logp_bitwise"] and got["grads_bitwise"], (where, got)
        # 2 layers: full uniform and selective rerun both layers' attention and MLP, block the first layer
        for module in ("core_attention", "mlp"):
            assert got["ran"][module] == base[module] + extra_runs, (where, got["ran"], base)


@pytest.mark.multiproc
@pytest.mark.parametrize("variant", ["sequence_parallel", "sp_full"])
def test_sequence_parallel_shards_tokens_and_changes_only_the_norm_gradients_order(result, variant):
    bound = 2 * (PACKED_TOKENS_AT_MOST - 1) * FP32_UNIT_ROUNDOFF
    for rank, ckpt, variants in _variants(result):
        base, got = variants["baseline"]["ran"], variants[variant]
        where = f"rank {rank} {ckpt} {variant}"
        (tokens,) = base["layer_tokens"]
        assert tokens % 2 == 1, "the batch must have an odd token count, so that SP pads it"
        assert got["ran"]["layer_tokens"] == [(tokens + 1) // 2], (where, got["ran"])
        assert got["logp_bitwise"], (where, got)
        assert all(name.endswith("layernorm.weight") for name in got["differing_params"]), (where, got)
        assert got["grad_max_rel"] <= bound, (where, got)


def test_activation_memory_rejects_bad_settings():
    for kwargs, match in (({"recompute": "some"}, "recompute='some'"),
                          ({"recompute_method": "random"}, "recompute_method"),
                          ({"recompute_num_layers": 0}, "recompute_num_layers"),
                          ({"recompute": "selective", "recompute_modules": ("layernorm",)}, "recompute_modules"),
                          ({"recompute": "selective", "recompute_modules": ()}, "recompute_modules")):
        with pytest.raises(ValueError, match=match):
            ActivationMemory(**kwargs)
    assert ActivationMemory(sequence_parallel=True).transformer_kwargs(tp=1) == {"sequence_parallel": False}
