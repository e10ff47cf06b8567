"""Checkpoint round trip under torchrun (gloo), run by test_checkpoint_multiproc.py:

    torchrun --nproc-per-node 2 tests/checkpoint/mp_checkpoint.py --layouts 2x1 1x1 1x2 --ckpt HF_DIR \
        --run-dir RUN --live-export LIVE --out RES.json

For each layout TxP in --layouts (one torchrun job for all, to pay the start-up once), in RUN/tp<T>pp<P>/:
a Megatron policy + PRM at TP=T, PP=P (DP = 2/(T*P)), two AdamW steps, save (per-rank RNG streams differ), then fresh
randomly initialised models/optimizers load it: parameters, optimizer states, scheduler states, RNG streams
and trainer_state must be bitwise equal on every rank, and one more training step must give bitwise the
same result as the uninterrupted models. The live models are also exported to HF (`LIVE/tp<T>pp<P>`) for the
calling test to compare with `primeflow export`. Any failed check raises (torchrun exits non-zero); rank 0
writes RES.json. Loads at other layouts: test_checkpoint_reshard.py.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder only (see tests/models/mp_parity.py)
import helpers as h  # noqa: E402
from primeflow.models import export_hf_checkpoint  # noqa: E402
from primeflow.trainer.checkpointing import CheckpointManager, export_hf  # noqa: E402
from primeflow.trainer.parallel import init_distributed, shutdown  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def _hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _dist_writers(path: Path) -> dict[str, list[int]]:
    """{role: ranks that wrote files of dist/<role>/}, from the manifest."""
    files = json.loads((path / "manifest.json").read_text())["files"]
    out: dict[str, set[int]] = {}
    for name, entry in files.items():
        if name.startswith("dist/") and name.endswith(".distcp"):
            out.setdefault(name.split("/")[1], set()).add(entry["rank"])
    return {role: sorted(ranks) for role, ranks in out.items()}


def run_layout(args, tp: int, pp: int) -> dict:
    """The whole check at TP=tp, PP=pp; returns what the calling test inspects."""
    lay = init_distributed(tp=tp, pp=pp, backend="gloo")
    run_dir, live = args.run / f"tp{tp}pp{pp}", args.live_export / f"tp{tp}pp{pp}"
    seed = args.seed

    # DP > 1: megatron-core's distributed optimizer (its dp_reshardable state, one shard per DP rank)
    distributed = lay.dp > 1
    models, opts, scheds = h.build_set(args.ckpt, init_seed=seed, distributed=distributed)
    vocab = models["policy"].model_config.vocab_size
    for i in range(2):  # same data on every rank: DP replicas stay identical (no gradient all-reduce here)
        h.train_step(models, opts, scheds, seed=seed + i, vocab=vocab)
    # Each rank's streams differ, so restoring another rank's file would be caught.
    random.seed(seed + 1000 * lay.rank)
    np.random.seed((seed + 1000 * lay.rank) % 2**32)
    torch.manual_seed(seed + 1000 * lay.rank)
    gen = torch.Generator().manual_seed(seed + 7 + lay.rank)
    state = {"rank": lay.rank, "cursor": 17 + lay.rank, "buffer": [[1, 2], [3]]}
    mgr = CheckpointManager(run_dir)
    mgr.save(2, models=models, optimizers=opts, schedulers=scheds, trainer_state=state, generators={"data": gen})
    for role, model in models.items():
        export_hf_checkpoint(model, live / role)
    before = h.snapshot(models, opts, scheds)
    streams = h.draw_streams(gen)
    h.train_step(models, opts, scheds, seed=seed + 100, vocab=vocab)
    continued = h.snapshot(models, opts, scheds)

    h.perturb_streams(gen)
    fresh, fresh_opts, fresh_scheds = h.build_set(args.ckpt, init_seed=seed + 1 + lay.rank, load=False,
                                                  distributed=distributed)
    gen2 = torch.Generator()
    got_state = mgr.load(2, models=fresh, optimizers=fresh_opts, schedulers=fresh_scheds,
                         generators={"data": gen2})
    assert got_state == state, (got_state, state)
    n = h.assert_snapshots_equal(h.snapshot(fresh, fresh_opts, fresh_scheds), before)
    got_streams = h.draw_streams(gen2)
    assert got_streams == streams, f"rank {lay.rank}: RNG streams differ after load"
    h.train_step(fresh, fresh_opts, fresh_scheds, seed=seed + 100, vocab=vocab)
    h.assert_snapshots_equal(h.snapshot(fresh, fresh_opts, fresh_scheds), continued)

    # export_hf of the saved checkpoint (collective, this layout) == exporting the live models, bitwise.
    exported = export_hf(run_dir, 2, args.run / f"exported_tp{tp}pp{pp}")
    export_equal = None
    if lay.rank == 0:
        for role in ("policy", "prm"):
            got, ref = _hf_tensors(exported[role]), _hf_tensors(live / role)
            assert got.keys() == ref.keys() and len(got) > 10, (sorted(got), sorted(ref))
            for name in got:
                assert torch.equal(got[name], ref[name]), f"export of {role}: {name} differs"
        export_equal = len(got)

    step_2 = run_dir / "checkpoints" / "step_2"
    return {"layout": {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp}, "tensors_compared": n, "streams": streams,
            "export_tensors_equal": export_equal, "distributed_optimizer": distributed,
            "dist_writers": _dist_writers(step_2), "files": sorted(p.name for p in step_2.iterdir())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", nargs="+", required=True, help="TxP items, e.g. 2x1 1x1 1x2")
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--run-dir", dest="run", type=Path, required=True)
    ap.add_argument("--live-export", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {}
    for item in args.layouts:
        tp, pp = map(int, item.split("x"))
        results[f"tp{tp}pp{pp}"] = run_layout(args, tp, pp)
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps(results, indent=1))
    shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
