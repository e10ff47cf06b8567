"""PRIME vs outcome-only RLOO on the config's built-in task (CPU; the embedded default's is the chain task,
configs/tiny_cpu_addition.yaml's 2-digit addition): per-stage step times and learning
curves over several seeds with the same budget, written as the report's step_breakdown and
learning_efficiency JSON (schemas in bench/report_sections.py).

    python -m bench.prime_vs_rloo [--steps 40] [--seeds 0 1 2] [--out bench/results] [--tag cpu_tiny]

Both modes start from the same SFT'd tiny model (built once by `primeflow train` itself with train.steps=0, on
the config's task: so seed 0 of the embedded default is exactly `make train`), run the same config
except `prime.mode`, and log `outcome_acc` (mean verifier score of the step's rollouts, before filtering:
the paper's "training reward", Fig. 3). The step breakdown also carries each mode's model flops
(bench/model_flops.py) and the peak flops of the device, so the report computes MFU. On a GPU node:

    python -m bench.prime_vs_rloo --nproc 8 --config configs/qwen2.5-7b-prime.yaml --model /models/SFT \
        --steps 20 --seeds 0 --tag h100_7b [--set key=value ...]

The command is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.model_flops import step_flops

ROOT = Path(__file__).resolve().parents[1]
BASE_SETTINGS = ["train.checkpoint_every=0", "logging.progress=false", "logging.tensorboard=false"]
EVIDENCE = ("prm_loss", "prm_acc", "prm/localisation", "prm/localisation_chance", "prm/localisation_n",
            "prm/reward_correct", "prm/reward_wrong", "adv_std", "filter_kept_frac", "outcome_acc")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # one vLLM + trainer process per core; OpenMP spinning costs more
    return env


def sft_model(work: Path, steps: int, config: str | None, extra: list[str]) -> Path:
    """The SFT model the trainer's own start-up builds for this config and task (what `make train` trains from;
    `primeflow sft` would warm-start on its --data task instead, whatever the config's task is)."""
    from bench.prm_sweep import sft_model as config_sft_model

    return config_sft_model(work / f"sft_{steps}", [f"sft.steps={steps}", *extra], config)


def run(mode: str, seed: int, model: Path, steps: int, work: Path, extra: list[str], *, nproc: int = 1,
        config: str | None = None) -> list[dict]:
    run_dir = work / f"{mode}_seed{seed}"
    sets = [f"model.path={model}", f"run.dir={run_dir}", f"train.steps={steps}", f"train.seed={seed}",
            f"prime.mode={mode}", "run.resume=none", *BASE_SETTINGS, *extra]
    launcher = [sys.executable, "-m", "primeflow"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "primeflow"]
    cmd = [*launcher, "train", *(["--config", config] if config else []), *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def parse_reuse(items: list[str]) -> dict[str, Path]:
    """--reuse MODE=DIR values -> {mode: DIR}."""
    out = {}
    for item in items:
        mode, sep, folder = item.partition("=")
        if not sep or mode not in ("prime", "rloo") or not folder:
            raise SystemExit(f"--reuse {item!r}: expected MODE=DIR with MODE one of prime, rloo")
        out[mode] = Path(folder)
    return out


def reused_rows(run_dir: Path, steps: int) -> list[dict]:
    """The metrics of a finished run of exactly `steps` steps (a shorter or longer one is refused)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"--reuse: {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if [r.get("step") for r in rows] != list(range(1, steps + 1)):
        raise SystemExit(f"--reuse: {path} holds steps {rows[0].get('step') if rows else None}.."
                         f"{rows[-1].get('step') if rows else None}, not 1..{steps}")
    return rows


def devices_and_peak(nproc: int, peak_flops: float | None, out: Path) -> tuple[int, float | None, str]:
    """(devices that divide tokens/s and MFU, peak flops per device, where the peak comes from). On CUDA one
    device per process; on CPU the processes share one machine, whose peak is its measured fp32 GEMM rate."""
    import torch

    from bench.hardware import gpu_limits

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        vendor = gpu_limits(name)
        if peak_flops is None and vendor:
            return nproc, vendor["bf16_TFLOPs"] * 1e12, f"{vendor['source']}, dense bf16"
        return nproc, peak_flops, "--peak-flops" if peak_flops else f"unknown device {name}: no MFU"
    if peak_flops is not None:
        return 1, peak_flops, "--peak-flops"
    measured = sorted(out.glob("*_hardware.json"), key=lambda p: p.stat().st_mtime)
    if not measured:
        return 1, None, "no *_hardware.json measured: no MFU"
    limits = json.loads(measured[-1].read_text())["hardware"]
    return 1, limits["fp32_GFLOPs"] * 1e9, f"measured fp32 GEMM of the machine ({measured[-1].name})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sft-steps", type=int, default=350)
    parser.add_argument("--model", help="SFT checkpoint to start from (default: build the tiny one)")
    parser.add_argument("--work", default="/tmp/primeflow-prime-vs-rloo")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--set", action="append", default=[], help="extra trainer overrides")
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun --standalone); on a "
                        "GPU node, one per GPU")
    parser.add_argument("--config", help="trainer config file (default: the embedded tiny default)")
    parser.add_argument("--peak-flops", type=float, help="peak flops per device for MFU (default: the vendor "
                        "bf16 figure on CUDA, else the newest *_hardware.json in --out: measured fp32 GEMM)")
    parser.add_argument("--reuse", action="append", default=[], metavar="MODE=DIR",
                        help="take MODE's runs from DIR/<mode>_seed<seed>/metrics.jsonl (each must hold --steps "
                             "steps) instead of training them, e.g. the rloo runs of an earlier comparison from "
                             "the same SFT model when only PRIME's settings changed (recorded in the output)")
    parser.add_argument("--tag", default="cpu_tiny", help="names the outputs step_breakdown_<tag>.json and "
                        "learning_efficiency_<tag>.json")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else sft_model(work, args.sft_steps, args.config, args.set)
    command = "python -m bench.prime_vs_rloo " + " ".join(argv if argv is not None else sys.argv[1:])
    curves: dict[str, dict[str, list]] = {"prime": {}, "rloo": {}}
    # the evidence for why (issue 18): per seed and step, the PRM's loss/accuracy, localisation, reward scale
    evidence: dict[str, dict[str, dict[str, list]]] = {"prime": {}, "rloo": {}}
    stage_times: dict[str, dict[str, float]] = {}
    peaks: dict[str, float] = {}
    t0 = time.time()
    reused = parse_reuse(args.reuse)
    for seed in args.seeds:
        for mode in ("prime", "rloo"):
            if mode in reused:
                rows = reused_rows(reused[mode] / f"{mode}_seed{seed}", args.steps)
            else:
                rows = run(mode, seed, model, args.steps, work, args.set, nproc=args.nproc, config=args.config)
            wall, curve = 0.0, []
            for r in rows:
                wall += r["time/step"]
                curve.append([r["step"], round(wall, 3), r["outcome_acc"]])
            curves[mode][str(seed)] = curve
            evidence[mode][str(seed)] = {k: [r.get(k) for r in rows] for k in EVIDENCE if any(k in r for r in rows)}
            sums = stage_times.setdefault(mode, {})
            # trainer's lifetime peak RSS (vLLM + models + heap), max over ranks and seeds
            peak = max(r.get("memory/peak_rss_gb", 0.0) for r in rows) * 1e9
            peaks[mode] = max(peaks.get(mode, 0.0), peak)
            for r in rows[1:]:  # step 1 includes one-off warm-up (first vLLM batch, allocator growth)
                for k, v in r.items():
                    if k.startswith("time/") or k == "tokens":
                        sums[k] = sums.get(k, 0.0) + v
                sums["steps"] = sums.get("steps", 0) + 1
            print(f"{mode} seed {seed}: acc {curve[0][2]:.3f} -> {curve[-1][2]:.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
    modes = {m: {k: (v / s["steps"] if k != "steps" else v) for k, v in s.items()} for m, s in stage_times.items()}
    for mode, peak in peaks.items():
        if peak:
            modes[mode]["peak_memory_bytes"] = peak
    from bench.hardware import environment

    out = Path(args.out)
    hf_config = json.loads((model / "config.json").read_text())
    resolved = {m: yaml.safe_load((reused.get(m, work) / f"{m}_seed{args.seeds[0]}" / "config.yaml").read_text())
                for m in modes}
    for mode, values in modes.items():
        sequences = resolved[mode]["data"]["prompts_per_step"] * resolved[mode]["rollout"]["n"]
        values["flops"] = step_flops(hf_config, resolved[mode], values["tokens"], sequences)
    first = resolved["prime"]
    config = {"model": str(model), "steps": args.steps, "overrides": args.set,
              "sft_steps": None if args.model else args.sft_steps,
              "trainer_config": args.config or "embedded default", "nproc": args.nproc,
              "prompts_per_step": first["data"]["prompts_per_step"], "K": first["rollout"]["n"],
              "max_tokens": first["rollout"]["max_tokens"], "parallel": first["parallel"],
              "task": None if first["data"]["train_files"] else {
                  "name": first["data"]["task"], **first["data"][first["data"]["task"]]},
              "reused_runs": {m: str(d) for m, d in reused.items()}}
    gpus, peak_flops, peak_source = devices_and_peak(args.nproc, args.peak_flops, out)
    (out / f"step_breakdown_{args.tag}.json").write_text(json.dumps(
        {"kind": "step_breakdown", "command": command, "environment": environment(), "config": config,
         "gpus": gpus, "peak_flops": peak_flops, "peak_flops_source": peak_source, "modes": modes}, indent=1) + "\n")
    (out / f"learning_efficiency_{args.tag}.json").write_text(json.dumps(
        {"kind": "learning_efficiency", "command": command, "config": config, "seeds": args.seeds,
         "baseline": "rloo", "curves": curves, "evidence": evidence}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
