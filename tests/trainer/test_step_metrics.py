"""A step's metrics reach the host once (trainer/stages/step_metrics.py, issue 15 part 1).

- `DeviceMetrics.read` copies every tensor metric with one `.tolist()`, passes host floats through, and
  leaves a ratio's key out exactly when its denominator is 0.
- The stages a step runs on its batch (old log-probs' mismatch, the PRM stage on both heads and all update
  modes, the advantages with TIS, the policy update), under `kernels.trusted_values()` as the loop runs
  them (the batch's values are checked once on the host, trainer/batch.py check_batch_values), read no
  tensor to the host from primeflow's code: every
  `.item()`, `.tolist()`, `float()`, `int()`, `bool()` or `.numpy()` on a tensor called from a primeflow
  module is recorded with its file and line, and only the listed host-side reads are allowed. Megatron's own
  read of the gradient norm (one per optimizer step, in its clip) is not primeflow's and is not recorded.
  A sync that Python does not see (boolean-mask indexing inside an op) is not caught here; the stages avoid
  it by construction (advantage.masked_mean).
- The metrics read at the end equal what the stages compute, checked against float64 recomputations.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from primeflow.kernels import trusted_values
from primeflow.trainer.rollout.metrics import logprob_mismatch_on_device
from primeflow.trainer.stages.advantage import advantage_stage, masked_mean_std
from primeflow.trainer.stages.logprobs import batch_logprobs
from primeflow.trainer.stages.policy import policy_stage
from primeflow.trainer.stages.prm import prm_stage
from primeflow.trainer.stages.results import PolicyTargets
from primeflow.trainer.stages.step_metrics import DeviceMetrics

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
_one_thread = helpers._one_thread  # module fixtures (stage_helpers.py)
ckpt = helpers.ckpt

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")
# host-side reads that are not device syncs: the policy's mini-batch shuffle is a CPU generator's permutation
ALLOWED = {("primeflow.trainer.stages.policy", "shuffled_rows")}
SHIM = "primeflow.models.compat"  # the CPU stand-in for torch.cuda inside Megatron's modules


@contextmanager
def primeflow_reads():
    """Records (module, function, line) of every tensor read called directly from a primeflow module."""
    seen: list[tuple[str, str, int]] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame.f_globals.get("__name__") == SHIM:  # the shim runs Megatron's calls: theirs, not ours
                frame = frame.f_back
            module = frame.f_globals.get("__name__", "")
            if module.startswith("primeflow"):
                seen.append((module, frame.f_code.co_name, frame.f_lineno))
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_read_is_one_copy_and_ratios_leave_empty_classes_out():
    m = DeviceMetrics({"a": torch.tensor(1.5), "b": 2.0})
    m.put("c", torch.tensor([3], dtype=torch.int64))
    m.put_ratio("mean", torch.tensor(3.0), torch.tensor(4.0))
    m.put_ratio("empty", torch.tensor(0.0), torch.tensor(0.0))
    merged = DeviceMetrics()
    merged.update(m)
    calls = []
    tolist = torch.Tensor.tolist
    torch.Tensor.tolist = lambda self: calls.append(1) or tolist(self)
    try:
        with primeflow_reads() as reads:
            got = merged.read()
    finally:
        torch.Tensor.tolist = tolist
    assert got == {"a": 1.5, "b": 2.0, "c": 3.0, "mean": 0.75}
    assert len(calls) == 1 and len(reads) == 1, (calls, reads)
    assert merged.keys() == {"a", "b", "c", "mean", "empty"}
    with pytest.raises(ValueError, match="scalars"):
        DeviceMetrics({"v": torch.ones(2)}).read()


def test_device_metric_helpers_match_float64():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 9, generator=g)
    mask = torch.rand(6, 9, generator=g) > 0.4
    mean, std = masked_mean_std(x, mask)
    sel = x.double()[mask]
    assert float(mean) == pytest.approx(float(sel.mean()), rel=1e-12)
    assert float(std) == pytest.approx(float(sel.std()), rel=1e-12)
    one = torch.zeros_like(mask)
    one[2, 3] = True
    assert masked_mean_std(x, one)[1].item() == 0.0  # one element: std 0, as the host version gave
    assert math.isnan(masked_mean_std(x, torch.zeros_like(mask))[0].item())
    y = x + 0.01 * torch.randn(6, 9, generator=g)
    got_mean, got_max = logprob_mismatch_on_device(x, y, mask)
    diff = (x.double() - y.double()).abs()[mask]
    assert float(got_mean) == pytest.approx(float(diff.mean()), rel=1e-12)
    assert float(got_max) == float(diff.max())


@pytest.mark.parametrize("update, fused", [("after", True), ("after", False), ("before", True), ("none", False)])
def test_stages_read_nothing_to_the_host_until_the_step_ends(ckpt, update, fused):
    models, config = helpers.tiny_models(ckpt)
    config.prm.update, config.prm.fused_head = update, fused
    config.prm.mini_batch_size, config.ppo.mini_batch_size = 4, 4
    config.train.micro_batch_tokens = 80  # several micro-batches per mini-batch
    config.rollout.tis_cap = 2.0
    batch = helpers.random_rollouts(4)
    metrics = DeviceMetrics()
    with primeflow_reads() as checked:  # outside trusted_values the kernels check values: the recorder sees it
        batch_logprobs(models.policy, batch, budget=config.train.micro_batch_tokens)
    assert any(module.startswith("primeflow.kernels") for module, _, _ in checked), checked
    with primeflow_reads() as reads, trusted_values():  # as trainer/train.py prime_step runs them
        old_logp = batch_logprobs(models.policy, batch, budget=config.train.micro_batch_tokens)
        metrics.update(dict(zip(("logprob_mismatch", "logprob_mismatch_max"),
                                logprob_mismatch_on_device(batch.vllm_logp, old_logp, batch.response_mask),
                                strict=True)))
        scores = prm_stage(models, batch, config, old_logp=old_logp)
        metrics.update(scores.metrics)
        adv = advantage_stage(batch, config, old_logp=old_logp, token_rewards=scores.token_rewards)
        metrics.update(adv.metrics)
        metrics.update(policy_stage(models, batch, config, PolicyTargets(old_logp, adv.advantages), step=1))
    stray = [r for r in reads if (r[0], r[1]) not in ALLOWED]
    assert not stray, f"device reads inside the stages: {stray}"
    got = metrics.read()
    keys = {"logprob_mismatch", "logprob_mismatch_max", "prm_loss", "prm_acc", "prm/reward_correct",
            "prm/reward_wrong", "tis_weight_mean", "adv_mean", "adv_std", "pg_loss", "pg_clipfrac",
            "policy_grad_norm"}
    assert set(got) == keys
    mask = batch.response_mask
    valid = adv.advantages.double()[mask]
    assert got["adv_mean"] == pytest.approx(float(valid.mean()), rel=1e-9, abs=1e-12)
    assert got["adv_std"] == pytest.approx(float(valid.std()), rel=1e-9)
    R = scores.token_rewards.double().sum(-1)
    assert got["prm/reward_wrong"] == pytest.approx(float(R[batch.outcome == 0].mean()), rel=1e-9, abs=1e-12)
    assert all(math.isfinite(v) for v in got.values()), got


def test_sft_steps_read_only_their_log_line(ckpt, tmp_path):
    """`primeflow sft` checks its batch once on the host and runs the update under trusted_values: the
    kernels' per-micro-batch value reads are gone, and the only reads left are the host batch's build and
    check (before its one move to the device) and the log line's loss. With trusted_values removed from
    run_sft the kernels' reads show and this fails."""
    from primeflow.trainer.config import SFTConfig
    from primeflow.trainer.data import arithmetic_sft_pairs
    from primeflow.trainer.sft import run_sft

    lines: list[str] = []
    with primeflow_reads() as reads:
        run_sft(ckpt, tmp_path / "sft", arithmetic_sft_pairs(8, seed=0),
                SFTConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=0), micro_batch_tokens=40, log=lines.append)
    where = {(module, function) for module, function, _ in reads}
    host = {("primeflow.trainer.batch", "build_train_batch"), ("primeflow.trainer.batch", "check_batch_values")}
    assert where <= host | {("primeflow.trainer.sft", "run_sft")}, where
    # one loss read per logged step (steps 1 and 3), none on step 2
    assert sum(function == "run_sft" for _, function, _ in reads) == len(lines) == 2, (reads, lines)
