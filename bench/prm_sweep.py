"""A measured sweep of the implicit PRM's settings on the chain task (issue 18, item 2): which tiny-model
defaults (PRM learning rate, beta, PRM mini-batch size) make `prm_loss` fall below ln 2 and `prm_acc` rise
within a short run. Every run starts from the same SFT'd tiny model (built once by the embedded default's
own recipe, train.steps=0) and differs only in the swept keys.

    python -m bench.prm_sweep --steps 20 --set rollout.max_tokens=64 --set data.chain.digits=1 \
        --set data.chain.steps=4 '--set=data.chain.ops=["+","-","*"]' \
        --grid prm.optim.lr=1e-5,1e-4,1e-3 --grid prime.beta=0.05,0.5 [--out bench/results] [--tag cpu_tiny_chain]

(the recorded cpu_tiny_chain run, from the defaults of its day: 2-digit 3-step chains, which leave the SFT'd
tiny model at ~1 % accuracy, and max_tokens=24, which cuts every 4-step answer; those --set values are now the
embedded default's own)

Writes `prm_sweep_<tag>.json`: the command, the shared settings, and per run its overrides, the per-step
prm_loss / prm_acc / prm/localisation / prm/localisation_chance / outcome_acc, and a summary (means over
the first and the last `--window` steps).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from primeflow.trainer.learning_summary import finite_mean

ROOT = Path(__file__).resolve().parents[1]
BASE_SETTINGS = ["train.checkpoint_every=0", "logging.progress=false", "logging.tensorboard=false",
                 "run.resume=none", "train.validate_every=0"]
TRACKED = ("prm_loss", "prm_acc", "prm/localisation", "prm/localisation_chance", "prm/localisation_n",
           "prm/reward_correct", "prm/reward_wrong", "outcome_acc", "time/step")
_DROP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP}  # a fresh single-process world
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _train(sets: list[str], config: str | None = None) -> None:
    cmd = [sys.executable, "-m", "primeflow", "train", *(["--config", config] if config else []),
           *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)


def sft_model(work: Path, shared: list[str], config: str | None = None) -> Path:
    """The config's SFT model for these settings (train.steps=0 builds it and trains nothing)."""
    out = work / "sft_run" / "sft_model"
    if not (out / "config.json").is_file():
        _train([f"run.dir={work / 'sft_run'}", "train.steps=0", *BASE_SETTINGS, *shared], config)
    return out


def parse_grid(items: list[str]) -> list[list[str]]:
    """["a=1,2", "b=x,y"] -> every combination as override lists [["a=1", "b=x"], ...]."""
    axes = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--grid expects key=v1,v2,..., got {item!r}")
        key, values = item.split("=", 1)
        axes.append([f"{key}={v}" for v in values.split(",") if v])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def summarise(records: list[dict], window: int) -> dict[str, float | None]:
    series = {k: [r.get(k) for r in records] for k in TRACKED}
    out: dict[str, float | None] = {}
    for key in (k for k in TRACKED if k not in ("prm/localisation_n", "time/step")):  # counts and times: no window
        out[f"{key}/first"] = finite_mean(series[key][:window])
        out[f"{key}/last"] = finite_mean(series[key][-window:])
    out["prm_loss/min"] = min((v for v in series["prm_loss"] if v is not None), default=None)
    out["time/step"] = finite_mean(series["time/step"][1:])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prm_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=5, help="steps averaged at the start and the end")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept key (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="shared by every run")
    parser.add_argument("--work", default=str(ROOT / "runs" / "prm_sweep"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--tag", default="cpu_tiny_chain")
    parser.add_argument("--config", help="trainer config file every run starts from (default: the embedded one)")
    parser.add_argument("--seeds", type=int, nargs="+", help="run the grid once per seed (default: --seed)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    shared = ["data.task=chain", f"train.seed={args.seed}", *args.set]
    model = sft_model(work, shared, args.config)  # one SFT model (seed --seed) for every seed
    seeds = args.seeds or [args.seed]
    runs = []
    for overrides in [[*grid, f"train.seed={s}"] if args.seeds else grid
                      for grid in parse_grid(args.grid) for s in seeds]:
        name = "_".join(o.replace("=", "-").replace(".", "") for o in overrides) or "base"
        run_dir = work / name
        t0 = time.perf_counter()
        _train([f"model.path={model}", f"run.dir={run_dir}", f"train.steps={args.steps}", *BASE_SETTINGS,
                *shared, *overrides], args.config)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        runs.append({"overrides": overrides, "wall_s": time.perf_counter() - t0,
                     "summary": summarise(records, args.window),
                     "per_step": {k: [r.get(k) for r in records] for k in TRACKED}})
        s = runs[-1]["summary"]
        print(f"{' '.join(overrides) or 'base'}: prm_loss {s['prm_loss/first']:.4f} -> {s['prm_loss/last']:.4f}, "
              f"prm_acc {s['prm_acc/first']:.3f} -> {s['prm_acc/last']:.3f}, localisation "
              f"{s['prm/localisation/last']} vs chance {s['prm/localisation_chance/last']}", flush=True)
    out = Path(args.out) / f"prm_sweep_{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "kind": "prm_sweep",
        "command": "python -m bench.prm_sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps, "seed": args.seed, "seeds": seeds, "config": args.config, "window": args.window,
        "shared_settings": shared,
        "ln2": math.log(2), "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
