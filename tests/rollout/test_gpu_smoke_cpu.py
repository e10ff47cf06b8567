"""scripts/gpu_smoke.py's trainer section, run on CPU (`--device cpu`, the dry run of what a GPU session runs):
rollouts sampled with transformers from the tiny checkpoint, then one PRIME step's training stages.

Checked: every metric reaches the JSON as a number (the stages return DeviceMetrics; a smoke run that wrote
their repr would lose the only GPU numbers a session gets), the first PRM mini-batch's rewards are exactly
0 (PRM == reference at step 0), and the sampler's log-probs match the trainer's old log-probs on the sampled
tokens. That last check is a wiring check, not a precision claim: both are fp32 here through different
kernels (measured: ~1e-6 mean, ~1e-5 max); a token paired with the wrong position's log-prob is off by O(1),
hence 1e-3.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from primeflow.trainer import parallel

ROOT = Path(__file__).resolve().parents[2]


def _smoke():
    spec = importlib.util.spec_from_file_location("_gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_section_on_cpu_with_sampled_rollouts(tmp_path):
    parallel.init_distributed(tp=1, pp=1)
    out = _smoke().trainer_step(torch.device("cpu"), "tiny", tmp_path)
    json.dumps(out, allow_nan=False)  # numbers only, all finite
    assert out["rollouts"]["kind"] == "transformers" and out["rollouts"]["rows"] == 64
    assert out["first_prm_minibatch_rewards_exactly_zero"] is True
    for section, key in (("prm", "prm_loss"), ("advantage", "adv_std"), ("policy", "pg_loss")):
        assert isinstance(out[section][key], float), (section, out[section])
    assert out["advantage"]["adv_std"] > 0  # alternating outcomes: the policy stage has something to learn
    mismatch = out["sampler_vs_trainer_logprob"]
    assert 0 <= mismatch["mean_abs"] <= mismatch["max_abs"] <= 1e-3, mismatch
