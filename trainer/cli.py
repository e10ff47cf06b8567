"""The `primeflow` command (also `python -m primeflow`): train, sft, eval, export, plan.

Each subcommand is one module with a `main(argv) -> int`; this file only dispatches, so each command's
arguments are documented where they are implemented (`primeflow <command> --help`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

COMMANDS = {
    "train": ("primeflow.trainer.train", "run PRIME training (no arguments: the embedded tiny CPU run)"),
    "sft": ("primeflow.trainer.sft", "supervised warm-start: cross-entropy on prompt -> response pairs"),
    "eval": ("primeflow.trainer.evaluation", "benchmark evaluation (MATH-500, AIME24, AMC23, Minerva, ...)"),
    "export": ("primeflow.trainer.export", "export a run checkpoint's policy and PRM as HF checkpoints"),
    "plan": ("primeflow.trainer.plan", "per-GPU memory of a config by component and stage of a step"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="primeflow", description="PRIME RL trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, what) in COMMANDS.items():
        sub = commands.add_parser(name, help=what, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv[:1])
    module_name = COMMANDS[args.command][0]
    try:
        if args.command == "train":  # its run directory's third_party.log is where import-time warnings go
            from .third_party_logs import hold_import_warnings

            with hold_import_warnings():
                module = import_module(module_name)
        else:
            module = import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"primeflow {args.command}: not available in this build ({module_name} is missing).",
              file=sys.stderr)
        return 2
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
