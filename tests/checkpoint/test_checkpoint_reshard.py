"""A checkpoint saved at one (TP, DP) layout resumes at another, losslessly (issue: any checkpoint resumes on
any layout). mp_reshard.py saves each case under torchrun at TP=2 or DP=2; here a 1-process world (TP=1,
DP=1) loads it into freshly initialised models and optimizers and saves the loaded state in model space
(`fully_reshardable`). Every tensor of that copy (weights, fp32 main parameters, both AdamW moments) must
equal, bitwise, the model-space copy the 2-process job wrote of the state it saved: resharding moves
slices, it never computes. Then what cannot follow a change of layout is refused, naming the setting."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from child_env import fresh_world_env
from primeflow.trainer.checkpointing import CheckpointError, CheckpointManager

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_primeflow_tests_mp_reshard", HERE / "mp_reshard.py")
mp_reshard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp_reshard)


@pytest.fixture(scope="module")
def saved_cases(tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    seed = int(os.environ.get("PRIMEFLOW_TEST_SEED", int.from_bytes(os.urandom(3), "little")))
    env = fresh_world_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "mp_reshard.py"), "--ckpt", str(tiny_ckpt), "--root", str(root), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"torchrun (seed {seed}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    return root


def _plain_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a dist checkpoint as a whole (global) tensor, by its flattened key."""
    from megatron.core.dist_checkpointing import load_plain_tensors

    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        elif torch.is_tensor(value):
            out[prefix] = value

    walk("", load_plain_tensors(str(path)))
    return out


@pytest.mark.multiproc
@pytest.mark.parametrize("case", list(mp_reshard.CASES))
def test_resume_at_another_layout_is_lossless(world, saved_cases, tiny_ckpt, ckpt_helpers, tmp_path, case):
    h = ckpt_helpers
    tp, options = mp_reshard.CASES[case]
    models, opts, scheds = h.build_set(tiny_ckpt, init_seed=99, load=False, **options)
    state = CheckpointManager(saved_cases / case / "run").load(2, models=models, optimizers=opts,
                                                                schedulers=scheds, rng=False)
    assert state == mp_reshard.TRAINER_STATE
    assert all(s.last_epoch == 2 for s in scheds.values())
    for opt in opts.values():
        opt.checkpoint_format = "fully_reshardable"
    here = CheckpointManager(tmp_path / "run").save(2, models=models, optimizers=opts, schedulers=scheds,
                                                    trainer_state=state, rng=False)
    compared = 0
    for role in models:
        got, want = _plain_tensors(here / "dist" / role), _plain_tensors(
            saved_cases / case / "canonical" / "checkpoints" / "step_2" / "dist" / role)
        assert got.keys() == want.keys() and any("exp_avg_sq" in k for k in got), sorted(want)
        for key in want:
            g, w = got[key], want[key]
            if g.shape != w.shape:
                # the vocabulary is padded to a multiple of TP (ModelConfig.padded_vocab_size): at TP=2 the
                # embedding, its main parameter and its moments have zero rows that TP=1 does not have
                assert g.shape[1:] == w.shape[1:] and 0 < w.shape[0] - g.shape[0] < tp, (key, g.shape, w.shape)
                assert not w[g.shape[0]:].any(), f"{role}: {key}: padded rows are not zero"
                w = w[: g.shape[0]]
            assert g.dtype == w.dtype and torch.equal(g, w), f"{role}: {key}"
            compared += 1
    assert compared > 50


def _edited_copy(src, dst, **layout):
    import shutil

    shutil.copytree(src, dst)
    step = dst / "checkpoints" / "step_2"
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["layout"].update(layout)
    (step / "manifest.json").write_text(json.dumps(manifest))
    return CheckpointManager(dst)


@pytest.mark.multiproc
def test_what_cannot_follow_a_layout_change_is_refused_naming_the_setting(world, saved_cases, tiny_ckpt,
                                                                          ckpt_helpers, tmp_path):
    h = ckpt_helpers
    case = "dp2_distributed_dp_reshardable"
    _, options = mp_reshard.CASES[case]
    models, opts, scheds = h.build_set(tiny_ckpt, init_seed=99, load=False, **options)
    run = saved_cases / case / "run"
    with pytest.raises(CheckpointError, match=r"RNG states were saved per rank .* load with rng=False"):
        CheckpointManager(run).load(2, models=models, optimizers=opts, schedulers=scheds)
    # dp_reshardable can change DP (above) but not TP: pretend it was saved at TP=2
    moved = _edited_copy(run, tmp_path / "moved", tp=2, world_size=4)
    with pytest.raises(CheckpointError, match=r"saved as dp_reshardable, which can change DP only: resume at tp=2 "
                                              r"pp=1, or save with parallel.optimizer_checkpoint=fully_reshardable"):
        moved.load(2, models=models, optimizers=opts, schedulers=scheds, rng=False)
    plain = dict(options, distributed=False)
    m2, o2, s2 = h.build_set(tiny_ckpt, init_seed=99, load=False, **plain)
    with pytest.raises(CheckpointError, match=r"saved with parallel.distributed_optimizer=true, this run has false"):
        CheckpointManager(run).load(2, models=m2, optimizers=o2, schedulers=s2, rng=False)


@pytest.mark.multiproc
def test_a_damaged_dist_file_is_named(world, saved_cases, tiny_ckpt, ckpt_helpers, tmp_path):
    import shutil

    h = ckpt_helpers
    case = "tp2_model_space_fp32"
    shutil.copytree(saved_cases / case / "run", tmp_path / "run")
    step = tmp_path / "run" / "checkpoints" / "step_2"
    victim = sorted((step / "dist" / "prm").glob("__1_*.distcp"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the hash written at save time can tell
    victim.write_bytes(bytes(data))
    models, opts, scheds = h.build_set(tiny_ckpt, init_seed=99, load=False, **mp_reshard.CASES[case][1])
    with pytest.raises(CheckpointError, match=rf"dist/prm/{victim.name}: sha256 differs"):
        CheckpointManager(tmp_path / "run").load(2, models=models, optimizers=opts, schedulers=scheds, rng=False)
    victim.write_bytes(bytes(data[:-7]))
    with pytest.raises(CheckpointError, match=rf"dist/prm/{victim.name}: size \d+ bytes, manifest says"):
        CheckpointManager(tmp_path / "run").load(2, models=models, optimizers=opts, schedulers=scheds, rng=False,
                                                 verify="size")
