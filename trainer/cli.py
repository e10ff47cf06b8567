"""The `primeflow` command (also `python -m primeflow`): train, sft, eval, export.

Subcommands whose implementation has not landed yet say so, name the issue that builds them and exit 2;
nothing pretends to run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PENDING = {
    "sft": "supervised warm-start (lands with the trainer issue, #7)",
    "eval": "benchmark evaluation on MATH-500/AIME/AMC/... (the evaluation issue, #8)",
    "export": "Megatron -> HF checkpoint export (the models issue, #4)",
}


def _train(args: argparse.Namespace) -> int:
    try:
        from primeflow.trainer.train import main as train_main  # the PRIME loop (issue #7)
    except ModuleNotFoundError as error:
        if error.name != "primeflow.trainer.train":
            raise
    else:
        return train_main(args.rest)

    print("primeflow train: the PRIME trainer has not landed yet (issue #7). Running the smallest real\n"
          "end-to-end path instead: a tiny Qwen2 checkpoint -> vLLM sampling (CPU) -> the trainer-side\n"
          "log-prob recompute through primeflow.kernels.token_logprobs -> the logprob_mismatch metric.",
          flush=True)
    if args.rest:
        print(f"(ignoring trainer arguments {args.rest}: there is no trainer config yet)", flush=True)
    from primeflow.models.smoke import run_smoke

    run_smoke(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="primeflow", description="PRIME RL trainer")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run PRIME training (no arguments: the embedded tiny CPU run)")
    train.add_argument("--out", default="runs/smoke", help="output directory of the run")
    train.add_argument("rest", nargs=argparse.REMAINDER, help="trainer arguments (--config F, --set k=v)")
    train.set_defaults(handler=_train)
    for name, what in PENDING.items():
        sub = commands.add_parser(name, help=f"{what} [not yet available]")
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(handler=lambda args, name=name: _pending(name))
    return parser


def _pending(name: str) -> int:
    print(f"primeflow {name}: not available yet: {PENDING[name]}.", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
