"""Device discipline, proven without a GPU: under torch's FakeTensorMode, tensors carry shapes, dtypes and
devices but no data, so a host tensor meeting a fake CUDA tensor raises FakeTensorDeviceMismatchError and
any device-to-host read (`.item()`, `.tolist()`, boolean indexing, `nonzero`) raises a data-dependent error.

A batch built on the host and moved once with `TrainBatch.to(device)` must be packed into micro-batches
(tokens, labels, positions, cu_seqlens), unpacked and gathered into response columns entirely on that
device, with no device read-back: the layout comes from the batch's host integers.

The per-micro-batch loss shares (PPO, PRM CE) and the PRM's token rewards run on fake CUDA too: the kernels are
custom ops with fake implementations (kernels/_library.py), and the shares index rows with device index
tensors, never with Python lists (a synchronous host copy per micro-batch). Forward only: a CPU-only torch
cannot build an autograd graph on (fake) CUDA tensors; the backward's device placement follows the forward's.

Not covered here: the Megatron forward itself on fake CUDA. On a CPU-only machine the CPU shim
(models/compat.py) maps Megatron's `torch.cuda.current_device()` allocations (RoPE frequencies) to the CPU,
and megatron-core 0.16.1's local THD RoPE reads `cu_seqlens` back to the host once per layer; fake mode
rejects both. That forward runs on a real GPU in scripts/gpu_smoke.sh.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from primeflow.models import logprobs as packed_io
from primeflow.trainer.batch import response_columns
from primeflow.trainer.config import Config
from primeflow.trainer.stages.logprobs import micro_batch_plan, micro_batch_tensors
from primeflow.trainer.stages.policy import ppo_micro_loss
from primeflow.trainer.stages.prm import prm_micro_loss, token_rewards
from primeflow.trainer.stages.results import PolicyTargets
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode

_spec = importlib.util.spec_from_file_location("_stage_helpers", Path(__file__).with_name("stage_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake(monkeypatch):
    """FakeTensorMode; `host_to_device` (host index lists -> device, non-blocking) becomes a plain factory
    call, because a list made into a tensor inside the mode is a fake *CPU* tensor, which fake mode cannot
    copy to a fake device (a real one it can)."""
    helpers.init_world()
    monkeypatch.setattr(packed_io, "host_to_device",
                        lambda values, dtype, device: torch.tensor(values, dtype=dtype, device=device))
    return FakeTensorMode(allow_non_fake_inputs=True)


def _pack_and_unpack(batch, rows):
    input_ids, idx, lengths = micro_batch_tensors(batch, rows)
    packed = packed_io.pack_rows(input_ids, [0] * len(rows), lengths)
    logp_1t = torch.zeros(packed.tokens_1t.shape, dtype=torch.float32, device=batch.device)
    logp_BR = response_columns(packed_io.unpack_logprobs(logp_1t, packed, input_ids.shape[1]),
                               batch.prompt_len.index_select(0, idx), batch.response_mask.index_select(0, idx))
    return packed, logp_BR


def test_a_moved_batch_is_packed_on_the_device_without_host_reads(fake):
    host = helpers.random_rollouts(0)
    with fake:
        batch = host.to(CUDA)
        for name in ("input_ids", "attention_mask", "prompt_len", "response_mask", "outcome", "vllm_logp"):
            assert getattr(batch, name).device == CUDA, name
        plan = micro_batch_plan(batch, list(range(batch.rows)), 40)
        assert len(plan) > 1
        for rows in plan:
            packed, logp_BR = _pack_and_unpack(batch, rows)
            for t in (packed.tokens_1t, packed.labels_1t, packed.position_ids_1t, packed.params.cu_seqlens_q,
                      logp_BR):
                assert t.device == CUDA
            assert packed.tokens_1t.shape == (1, sum(host.seq_lens[r] for r in rows))
            assert logp_BR.shape == (len(rows), host.response_mask.shape[1])


def test_a_host_batch_meeting_device_tensors_fails(fake):
    """The check above can fail: device-side log-probs against the host batch's masks raise."""
    host = helpers.random_rollouts(0)
    with fake, pytest.raises(FakeTensorDeviceMismatchError):
        logp_BT1 = torch.zeros(host.rows, host.input_ids.shape[1] - 1, device=CUDA)
        response_columns(logp_BT1, host.prompt_len, host.response_mask)


def test_reading_device_values_on_the_host_is_caught(fake):
    """And a device-to-host read in the packing path would raise: the old packing read attention_mask back."""
    host = helpers.random_rollouts(0)
    with fake, pytest.raises(Exception, match="nonzero|local_scalar_dense|data-dependent|DynamicOutputShape"):
        batch = host.to(CUDA)
        packed_io.pack_padded(batch.input_ids, batch.attention_mask)


def _batch_with_stage_outputs(host, device: torch.device, *, host_extra: str | None = None):
    """The moved batch and the tensors earlier stages hand on (made on `device`, except `host_extra`, which
    stays on the host as a misplaced stage output would)."""
    batch = host.to(device)
    shape = batch.response_mask.shape
    made = {name: torch.randn(shape, device="cpu" if name == host_extra else device)
            for name in ("old_logp", "advantages", "ref_logp")}
    return batch, PolicyTargets(made["old_logp"], made["advantages"]), made["ref_logp"]


def _loss_shares(batch, targets, ref_logp, rows: list[int]):
    config = Config()
    logp = torch.randn(len(rows), batch.response_mask.shape[1], device=batch.device)
    clipped = torch.zeros(1, dtype=torch.float64, device=batch.device)
    pg = ppo_micro_loss(None, batch, targets, config, rows, clipped).share(rows, logp)
    record = torch.zeros(batch.response_mask.shape, device=batch.device)
    prm = prm_micro_loss(batch, ref_logp, config, rows, record).share(rows, logp)
    rewards = token_rewards(record, ref_logp, batch.response_mask, beta=0.05, granularity="whole")
    return pg, prm, clipped, record, rewards


def test_loss_shares_and_token_rewards_stay_on_the_device_without_host_reads(fake):
    host = helpers.random_rollouts(1)
    with fake:
        batch, targets, ref_logp = _batch_with_stage_outputs(host, CUDA)
        outputs = _loss_shares(batch, targets, ref_logp, [5, 0, 7])
    for t in outputs:
        assert t.device == CUDA
    pg, prm, _, record, rewards = outputs
    assert pg.shape == prm.shape == ()
    assert record.shape == rewards.shape == batch.response_mask.shape


@pytest.mark.parametrize("host_extra", ["old_logp", "advantages", "ref_logp"])
def test_a_stage_output_left_on_the_host_fails_the_loss_shares(fake, host_extra):
    host = helpers.random_rollouts(1)
    with fake, pytest.raises((ValueError, FakeTensorDeviceMismatchError), match="on cpu|cpu"):
        _loss_shares(*_batch_with_stage_outputs(host, CUDA, host_extra=host_extra), [5, 0, 7])
