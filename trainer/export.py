"""`primeflow export --run DIR [--step N] [--out DIR] [--models policy,prm] [--force]`: HF checkpoints of a
run checkpoint's policy and PRM (see checkpointing/hf_export.py).

A checkpoint saved with TP x PP = n > 1 is rebuilt at that layout, so this command re-launches itself under
`torchrun --standalone --nproc-per-node n` when started as a single process (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from .checkpointing import CheckpointError, export_hf, saved_layout


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="primeflow export",
        description="Export a run checkpoint's policy and PRM as HF checkpoints (safetensors, config, tokenizer). "
                    "A checkpoint saved with TP x PP = n > 1 is exported by n processes: started as one process, "
                    "this command re-launches itself under torchrun.")
    # --run-dir: the spelling used under torchrun, whose own parser rejects `--run` as an ambiguous
    # abbreviation of its --run-path option even after the script name.
    ap.add_argument("--run", "--run-dir", dest="run", required=True, help="run directory (holds checkpoints/)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ap.add_argument("--out", default=None, help="output directory (default: RUN/export/step_<N>); "
                                                "each model goes to OUT/<name>/")
    ap.add_argument("--models", default=None,
                    help="comma-separated model names (default: policy and prm, those the checkpoint holds)")
    ap.add_argument("--force", action="store_true", help="replace existing OUT/<name> directories")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    models = [m for m in args.models.split(",") if m] if args.models else None
    try:
        _, manifest = saved_layout(args.run, args.step)
        n = manifest["layout"]["tp"] * manifest["layout"]["pp"]
        # Not inside a multi-process job (WORLD_SIZE unset or 1; a RANK=0 alone may be left in the environment
        # by a single-process init_distributed): start one with n processes.
        if n > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   "-m", "primeflow.trainer.export", "--run-dir", args.run,
                   *(["--step", str(args.step)] if args.step is not None else []),
                   *(["--out", args.out] if args.out is not None else []),
                   *(["--models", args.models] if args.models else []), *(["--force"] if args.force else [])]
            print(f"primeflow export: checkpoint has tp*pp={n}; running: {' '.join(cmd)}", file=sys.stderr)
            return subprocess.run(cmd).returncode
        written = export_hf(args.run, args.step, args.out, models=models, overwrite=args.force)
    except CheckpointError as exc:
        print(f"primeflow export: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        for name, path in written.items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
