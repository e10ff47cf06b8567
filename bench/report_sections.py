"""Step-breakdown and learning-efficiency sections of the report, rendered from JSON the trainer writes.

Step breakdown (`bench/results/step_breakdown*.json`, or any file with "kind": "step_breakdown"):
    {"kind": "step_breakdown",
     "command": "<the exact command that produced the file>",
     "environment": {...},                # optional: bench.hardware.environment() of the run
     "config": {...},                     # the trainer config (model, prompts/step, K, max tokens, TP/PP/DP)
     "gpus": 8,                           # devices the step ran on (1 on CPU); divides tokens/s
     "peak_flops": 9.89e14,               # optional per-device peak: MFU = flops / (time/step*gpus*peak_flops)
     "modes": {"prime": {"time/rollout": s, "time/verify": s, "time/old_logprobs": s, "time/prm": s,
                         "time/advantage": s, "time/update": s, "time/refit": s,   # any time/* stages
                         "time/step": s,          # optional, else the sum of the stages
                         "tokens": n,             # prompt + response tokens processed in the step
                         "flops": f,              # optional model flops of the step
                         "mfu": x,                # optional, used when flops/peak_flops are absent
                         "peak_memory_bytes": b,  # optional
                         "steps": k},             # optional: how many steps the times average
               "rloo": {...same keys...}}}
    tokens/s = tokens / time/step; tokens/s/GPU = tokens/s / gpus (NeMo-RL's definition).

Learning efficiency (`bench/results/learning_efficiency*.json`, or "kind": "learning_efficiency"):
    {"kind": "learning_efficiency", "command": "...", "config": {...}, "seeds": [0, 1, 2],
     "baseline": "rloo",                  # optional, default "rloo"
     "curves": {"prime": {"0": [[step, wall_s, train_acc], ...], "1": [...], ...},
                "rloo":  {...}},
     "evidence": {"prime": {"0": {"prm_loss": [...], "prm_acc": [...], "prm/localisation": [...], ...}}}}
                                          # optional: per step, the PRM's signals (bench/report_evidence.py)
    A mode's curves may also be a list aligned with "seeds" (one [[step, wall_s, acc], ...] per seed) or a
    single [[step, wall_s, acc], ...] list. Seeds are averaged at the steps all of them reached.
    One step's accuracy is a mean over few samples (32 per step on the tiny CPU run: about +-0.09), so the
    statistics use a window of W steps, W = "window" if given, else 20 % of the steps (at least 1):
      final accuracy   = per seed, the mean over the last W steps; reported as mean +- sd over seeds;
      smoothed curve   = the seed-mean curve's trailing mean over W steps (full windows only, from step W);
      steps to reach   = the first step at which a mode's smoothed curve reaches the baseline's final
                         accuracy (the paper's PRIME claim: 40 % of RLOO's steps). The baseline reaches its own
                         final accuracy at its last step at the latest.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import report_fmt as fmt
from .report_evidence import bootstrap_difference, render_evidence
from .report_plots import curves_figure, stage_figure


def step_time(mode: dict[str, Any]) -> float:
    if "time/step" in mode:
        return float(mode["time/step"])
    return sum(float(v) for k, v in mode.items() if k.startswith("time/"))


def render_step_breakdown(source, plots_dir: Path, rel: str) -> str:
    data = source.data
    modes: dict[str, dict[str, Any]] = data.get("modes") or {}
    gpus = int(data.get("gpus", 1) or 1)
    peak = data.get("peak_flops")
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`", ""]
    if data.get("config"):
        lines += ["Config: " + ", ".join(f"{k}={fmt.number(v)}" for k, v in data["config"].items()), ""]
    env = data.get("environment") or {}
    if env:
        lines += [f"Device: {env.get('device_name', '?')} x {gpus}, commit "
                  f"{str((env.get('commit') or {}).get('id', '?'))[:10]}, load `{env.get('uptime', '?')}`.", ""]
    if peak:
        lines += [f"MFU = model flops of the step (bench/model_flops.py) / (step time x {gpus} device(s) x "
                  f"{peak / 1e12:.3g} TFLOP/s peak: {data.get('peak_flops_source', 'given in the file')}).", ""]
    stages: list[str] = []
    for mode in modes.values():
        stages += [k for k in mode if k.startswith("time/") and k != "time/step" and k not in stages]
    names = list(modes)
    compare = "prime" in modes and "rloo" in modes
    header = ["stage", *[f"{m} (s)" for m in names]] + (["prime / rloo"] if compare else [])
    body = []

    def add(label: str, values: list[float | None], show, ratio: bool = True) -> None:
        cells = [show(v) for v in values]
        if compare:
            p, r = values[names.index("prime")], values[names.index("rloo")]
            cells.append(fmt.ratio(p / r) if ratio and p is not None and r else "—")
        body.append([label, *cells])

    def sec(v):
        return "—" if v is None else f"{v:.3f}"

    for stage in stages:
        add(stage.removeprefix("time/"), [modes[m].get(stage) for m in names], sec)
    times = [step_time(modes[m]) for m in names]
    add("**step**", times, sec)
    tokens = [modes[m].get("tokens") for m in names]
    tps = [t / s if t and s else None for t, s in zip(tokens, times, strict=True)]
    add("tokens/step", tokens, lambda v: "—" if v is None else str(int(v)))
    add("tokens/s", tps, lambda v: "—" if v is None else f"{v:.1f}")
    add("tokens/s/GPU", [None if v is None else v / gpus for v in tps], lambda v: "—" if v is None else f"{v:.1f}")
    mfu = []
    for m, t in zip(names, times, strict=True):
        flops = modes[m].get("flops")
        mfu.append(flops / (t * gpus * peak) if flops and peak and t else modes[m].get("mfu"))
    if any(v is not None for v in mfu):
        add("MFU", mfu, fmt.percent)
    mem = [modes[m].get("peak_memory_bytes") for m in names]
    if any(v is not None for v in mem):
        add("peak memory", mem, fmt.nbytes)
    lines += [fmt.table(header, body), ""]
    name = f"{Path(source.name).stem}.png"
    if stage_figure(stages, modes, "seconds per stage of one step", plots_dir / name):
        lines += [f"![step breakdown]({rel}/{name})", ""]
    return "\n".join(lines)


def seed_curves(raw: Any, seeds: list[Any]) -> dict[str, list[tuple[float, float, float]]]:
    """{seed: [(step, wall_s, acc), ...]} from any of the accepted layouts."""
    if isinstance(raw, dict):
        return {str(k): [tuple(map(float, p)) for p in v] for k, v in raw.items()}
    if raw and isinstance(raw[0], (list, tuple)) and raw[0] and isinstance(raw[0][0], (list, tuple)):
        labels = [str(s) for s in seeds] if len(seeds) == len(raw) else [str(i) for i in range(len(raw))]
        return {label: [tuple(map(float, p)) for p in curve] for label, curve in zip(labels, raw, strict=True)}
    return {"all": [tuple(map(float, p)) for p in raw]}


def aggregate(per_seed: dict[str, list[tuple[float, float, float]]]) -> dict[str, list[float]]:
    """Mean / min / max accuracy and mean wall time at the steps every seed reached."""
    common = set.intersection(*(set(p[0] for p in curve) for curve in per_seed.values()))
    out: dict[str, list[float]] = {"step": [], "wall": [], "mean": [], "lo": [], "hi": [], "sd": []}
    for step in sorted(common):
        points = [next(p for p in curve if p[0] == step) for curve in per_seed.values()]
        accs = [p[2] for p in points]
        mean = sum(accs) / len(accs)
        out["step"].append(step)
        out["wall"].append(sum(p[1] for p in points) / len(points))
        out["mean"].append(mean)
        out["lo"].append(min(accs))
        out["hi"].append(max(accs))
        out["sd"].append(math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0)
    return out


def trailing_mean(values: list[float], window: int) -> list[float | None]:
    """Mean of the last `window` values at each position; None until a full window exists."""
    return [None if i + 1 < window else sum(values[i + 1 - window:i + 1]) / window for i in range(len(values))]


def window_for(data: dict[str, Any], curves: dict[str, dict[str, list[float]]]) -> int:
    if data.get("window"):
        return int(data["window"])
    steps = min((len(c["step"]) for c in curves.values()), default=1)
    return max(1, round(0.2 * steps))


def seed_finals(per_seed: dict[str, list[tuple[float, float, float]]], window: int) -> list[float]:
    """Each seed's mean accuracy over its last `window` steps."""
    return [sum(p[2] for p in curve[-window:]) / len(curve[-window:]) for curve in per_seed.values()]


def final_accuracy(per_seed: dict[str, list[tuple[float, float, float]]], window: int) -> tuple[float, float]:
    """Mean and sd over seeds of each seed's mean accuracy over its last `window` steps."""
    finals = seed_finals(per_seed, window)
    mean = sum(finals) / len(finals)
    sd = math.sqrt(sum((f - mean) ** 2 for f in finals) / (len(finals) - 1)) if len(finals) > 1 else 0.0
    return mean, sd


def first_reaching(curve: dict[str, list[float]], target: float) -> tuple[float, float] | None:
    """(step, mean wall s) where the smoothed accuracy first reaches target, or None."""
    for step, wall, acc in zip(curve["step"], curve["wall"], curve["smooth"], strict=True):
        if acc is not None and acc >= target - 1e-12:  # the baseline's own last window equals its target
            return step, wall
    return None


def render_learning_efficiency(source, plots_dir: Path, rel: str) -> str:
    data = source.data
    seeds = list(data.get("seeds") or [])
    per_seed = {mode: seed_curves(raw, seeds) for mode, raw in (data.get("curves") or {}).items()}
    curves = {mode: aggregate(runs) for mode, runs in per_seed.items()}
    curves = {m: c for m, c in curves.items() if c["step"]}
    window = window_for(data, curves)
    finals = {m: final_accuracy(per_seed[m], window) for m in curves}
    for c in curves.values():
        c["smooth"] = trailing_mean(c["mean"], window)
    baseline = data.get("baseline", "rloo")
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`", ""]
    if data.get("config"):
        lines += ["Config: " + ", ".join(f"{k}={fmt.number(v)}" for k, v in data["config"].items()), ""]
    lines += [f"Seeds: {', '.join(map(str, seeds)) or '?'}; curves are the mean over seeds at the steps every seed "
              f"reached (band: min-max), smoothed by a trailing mean over W = {window} steps. Final accuracy is "
              f"each seed's mean over its last {window} steps (mean ± sd over seeds); a mode reaches the baseline "
              "when its smoothed curve first gets to the baseline's final accuracy.", ""]
    base = curves.get(baseline)
    target = finals[baseline][0] if base else None
    header = ["mode", "steps", f"final accuracy, last {window} steps (mean ± sd)", "wall time at the last step",
              f"first step reaching {baseline}'s final accuracy", f"fraction of {baseline}'s steps",
              f"wall time to reach it (fraction of {baseline}'s)"]
    body = []
    for mode, c in curves.items():
        reach = first_reaching(c, target) if target is not None else None
        frac = reach[0] / base["step"][-1] if reach and base and base["step"][-1] else None
        wall_frac = reach[1] / base["wall"][-1] if reach and base and base["wall"][-1] else None
        body.append([mode, str(int(c["step"][-1])), f"{finals[mode][0]:.3f} ± {finals[mode][1]:.3f}",
                     fmt.seconds(c["wall"][-1]),
                     str(int(reach[0])) if reach else ("—" if target is None else "not reached"),
                     fmt.percent(frac), f"{fmt.seconds(reach[1])} ({fmt.percent(wall_frac)})" if reach else "—"])
    lines += [fmt.table(header, body), ""]
    for mode in curves:
        if mode != baseline and base and len(per_seed[mode]) > 1 and len(per_seed[baseline]) > 1:
            diff, lo, hi = bootstrap_difference(seed_finals(per_seed[mode], window),
                                                seed_finals(per_seed[baseline], window))
            lines += [f"Final accuracy {mode} − {baseline}: {diff:+.3f}, bootstrap 95 % interval [{lo:+.3f}, "
                      f"{hi:+.3f}] over seeds ({len(per_seed[mode])} vs {len(per_seed[baseline])}; "
                      "bench/report_evidence.py).", ""]
    stem = Path(source.name).stem
    if curves_figure(curves, "training accuracy (mean over seeds)", plots_dir / f"{stem}.png"):
        lines += [f"![learning efficiency]({rel}/{stem}.png)", ""]
    lines += render_evidence(data.get("evidence") or {}, window, plots_dir, stem, rel)
    return "\n".join(lines)
