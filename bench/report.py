"""One markdown report from every JSON result under bench/results/, with PNG plots.

    python -m bench.report [--results bench/results] [--out bench/REPORT.md]

(from the repository root, with the project's virtualenv: `.venv/bin/python -m bench.report`). Any
*.json in --results is picked up (see report_data.py for the kinds recognised); plots go to
<results>/plots/. Sections: environment of the report, hardware limits and formulas, one section per
kernel benchmark file (every table headed by the command that produced it), the CPU scaling sweep,
the PRIME step breakdown and learning efficiency (when their JSON exists; schemas in report_sections.py),
and everything else (verifiers, models, rollout, ...) as generic tables.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import report_fmt as fmt
from . import report_scaling, report_sweep
from .hardware import environment, gpu_limits
from .report_data import OURS, Row, Source, load_sources, machine, pytest_rows
from .report_plots import kernel_figure
from .report_refit import render_refit
from .report_sections import render_learning_efficiency, render_step_breakdown

FORMULAS = """\
Throughput = work / time, with the work counted as:
- `linear_token_logprobs`: 2·N·H·V flops forward; 6·N·H·V forward+backward (the forward, dhidden and dweight
  GEMMs; primeflow's recompute-in-backward executes 8·N·H·V and eager 6·N·H·V, only 6·N·H·V is counted).
- `prime_token_rewards`: 2·N·H·V flops per model given as (hidden, weight) (3 models: policy, PRM, reference).
- `token_logprobs`: bytes moved = N·V·elt forward (logits read once), 3·N·V·elt forward+backward (read in the
  forward, read again and the gradient written in the backward); elt = 4 B fp32, 2 B bf16.
- other ops: the `bytes_read` the benchmark records (its inputs read once).
% of limit = achieved / limit: GB/s against memory bandwidth, TFLOP/s against the dense GEMM peak of the
dtype. GPU limits are vendor figures (H100 SXM: 3.35 TB/s HBM3, 989 TFLOP/s dense bf16; H200: 4.8 TB/s, 989).
CPU limits are measured (bench/hardware.py: best-of-3 torch copy of 512 MiB, bytes = read + write; fp32
matmul 3072³), in the same run when the results file carries them, else by the file named in the table.
Peak memory = peak extra resident set of one call (bench/memory.py; CUDA: torch.cuda.max_memory_allocated
above the allocation before the call). Ratios compare providers measured in the same run (same file):
"speedup" = peer time / primeflow time (>1: primeflow faster); "memory" = primeflow peak / peer peak."""


def limits_for(source: Source, device: str, cpu_limits: tuple[dict[str, Any], str] | None
               ) -> tuple[dict[str, Any] | None, str]:
    """(limits, where they come from) for a results file."""
    data = source.data
    if isinstance(data.get("hardware"), dict):
        return data["hardware"], "measured in this run"
    if device.startswith("cuda"):
        name = (data.get("primeflow_environment") or {}).get("device_name", "")
        found = gpu_limits(name)
        return (found, found["source"]) if found else (None, f"no known limits for {name or 'this GPU'}")
    if cpu_limits:
        return cpu_limits[0], f"measured by `{cpu_limits[1]}` (another run on this machine)"
    return None, "no CPU limits measured (run `python -m bench.hardware`)"


def _fraction(row: Row, limits: dict[str, Any] | None) -> float | None:
    if not limits or not row.seconds or row.seconds != row.seconds:
        return None
    if row.flops is not None:
        if row.device.startswith("cuda") and row.dtype == "bf16" and limits.get("bf16_TFLOPs"):
            return row.flops / row.seconds / (limits["bf16_TFLOPs"] * 1e12)
        if row.device == "cpu" and row.dtype in ("fp32", None) and limits.get("fp32_GFLOPs"):
            return row.flops / row.seconds / (limits["fp32_GFLOPs"] * 1e9)
        return None
    if row.bytes_moved is not None and limits.get("mem_GBps"):
        return row.bytes_moved / row.seconds / (limits["mem_GBps"] * 1e9)
    return None


def kernel_tables(rows: list[Row], limits: dict[str, Any] | None) -> list[str]:
    """One table per kernel: every (case, provider) with its throughput and its ratio against primeflow."""
    out = []
    ours_by_case = {(r.kernel, r.case): r for r in rows if r.ours}
    by_kernel: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_kernel[row.kernel].append(row)
    for kernel, krows in by_kernel.items():
        header = ["case", "provider", "time", "statistic", "throughput", "% of limit", "peak extra memory",
                  "primeflow speedup vs this", "memory primeflow / this"]
        body = []
        for row in krows:
            ours = ours_by_case.get((row.kernel, row.case))
            speedup = mem = None
            if ours is not None and not row.ours:
                speedup = row.seconds / ours.seconds if ours.seconds else None
                if ours.peak_bytes is not None and row.peak_bytes:
                    mem = ours.peak_bytes / row.peak_bytes
            throughput = fmt.rate(
                row.bytes_moved / row.seconds if row.bytes_moved is not None and row.seconds else None,
                row.flops / row.seconds if row.flops is not None and row.seconds else None)
            time_text = fmt.seconds(row.seconds)
            if row.extra.get("cpu_s"):
                time_text += f" (CPU {fmt.seconds(row.extra['cpu_s'])})"
            body.append([row.case, f"**{row.provider}**" if row.ours else str(row.provider), time_text, row.stat,
                         throughput, fmt.percent(_fraction(row, limits)), fmt.nbytes(row.peak_bytes),
                         "—" if row.ours else fmt.ratio(speedup), "—" if row.ours else fmt.ratio(mem)])
        out += [f"#### {kernel}", "", fmt.table(header, body), ""]
    return out


def other_table(rows: list[Row]) -> list[str]:
    """Benchmarks without a provider (throughput suites): time and every numeric extra_info field."""
    if not rows:
        return []
    body = []
    for row in rows:
        metrics = ", ".join(f"{k}={fmt.number(v)}" for k, v in row.extra.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool))
        body.append([row.kernel, row.case, fmt.seconds(row.seconds), metrics])
    return [fmt.table(["suite", "benchmark", "time (median)", "recorded metrics"], body), ""]


def _pytest_header(source: Source, rows: list[Row], limits: dict[str, Any] | None, where: str) -> list[str]:
    m = machine(source)
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`"
             + (f" ({source.command_note})" if source.command_note else ""), ""]
    lines.append(f"Device: {m['device']}" + (f" ({m['cores']} cores)" if m.get("cores") else "")
                 + f"; commit {str(m['commit'] or '?')[:10]}{' (dirty)' if m.get('dirty') else ''}; "
                 f"run {m['date'] or '?'}" + (f"; load `{m['uptime']}`" if m.get("uptime") else "; load not recorded")
                 + ".")
    if m["libraries"]:
        lines.append("Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + ".")
    threads = sorted({str(r.extra["threads"]) for r in rows if "threads" in r.extra})
    if threads:
        lines.append(f"Threads: {', '.join(threads)}.")
    if any(r.provider for r in rows):
        lines.append(_limits_line(limits, where))
    lines.append("")
    return lines


def _limits_line(limits: dict[str, Any] | None, where: str) -> str:
    figures = []
    if limits and limits.get("mem_GBps"):
        figures.append(f"memory {limits['mem_GBps']:.0f} GB/s")
    if limits and limits.get("fp32_GFLOPs"):
        figures.append(f"fp32 GEMM {limits['fp32_GFLOPs']:.0f} GFLOP/s")
    if limits and limits.get("bf16_TFLOPs"):
        figures.append(f"bf16 {limits['bf16_TFLOPs']:.0f} TFLOP/s")
    return f"Limits: {where}" + (f" ({', '.join(figures)})" if figures else "") + "."


def render_pytest(source: Source, plots_dir: Path, rel: str, cpu_limits) -> str:
    rows = pytest_rows(source)
    device = next((r.device for r in rows), "cpu")
    limits, where = limits_for(source, device, cpu_limits)
    lines = _pytest_header(source, rows, limits, where)
    with_provider = [r for r in rows if r.provider]
    lines += kernel_tables(with_provider, limits)
    lines += other_table([r for r in rows if not r.provider])
    for kernel in dict.fromkeys(r.kernel for r in with_provider):
        krows = [r for r in with_provider if r.kernel == kernel and r.stat == "median"]
        cases = list(dict.fromkeys(r.case for r in krows))
        providers = sorted({r.provider for r in krows}, key=lambda p: (p in OURS, p))
        name = f"{Path(source.name).stem}_{kernel.replace(' ', '_').replace('+', '_')}.png"
        if kernel_figure(cases, providers, {(r.case, r.provider): r.seconds for r in krows},
                         {(r.case, r.provider): r.peak_bytes or 0 for r in krows}, f"{kernel} ({source.name})",
                         plots_dir / name):
            lines += [f"![{kernel}]({rel}/{name})", ""]
    return "\n".join(lines)


def render_unknown(source: Source) -> str:
    data = source.data
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`"
             + (f" ({source.command_note})" if source.command_note else ""), ""]
    if isinstance(data, dict):
        scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))}
        if scalars:
            lines += [fmt.table(["field", "value"], [[k, fmt.number(v)] for k, v in scalars.items()]), ""]
    return "\n".join(lines)


def cpu_limit_source(sources: list[Source]) -> tuple[dict[str, Any], str] | None:
    """The best measured CPU limits among the files, each figure from the file that measured it best (a
    limit describes the machine at a quiet moment; used for results that did not measure their own)."""
    found = [(s.data["hardware"], s.name) for s in sources
             if isinstance(s.data, dict) and isinstance(s.data.get("hardware"), dict)
             and s.data["hardware"].get("device", "cpu") == "cpu"]
    if not found:
        return None
    limits: dict[str, Any] = {"device": "cpu"}
    names = []
    for key in ("mem_GBps", "fp32_GFLOPs"):
        best = max(found, key=lambda f: f[0].get(key, 0))
        limits[key] = best[0].get(key)
        limits.update(cpu=best[0].get("cpu"), threads=best[0].get("threads"))
        names.append(best[1])
    return limits, ", ".join(dict.fromkeys(names))


def build_report(results: Path, out: Path) -> str:
    """Render the report for `results` into `out` (plots under results/plots) and return the markdown."""
    plots_dir = results / "plots"
    rel = os.path.relpath(plots_dir, out.parent)
    # Every plot is re-rendered from the JSON below: drop the old ones so a removed result leaves no orphan.
    for stale in plots_dir.glob("*.png"):
        stale.unlink()
    sources, warnings = load_sources(results)
    env = environment()
    lines = ["# primeflow benchmark report", "",
             f"Generated by `python -m bench.report --results {results} --out {out}` at {env['utc']}.", "",
             "## Environment of this report", "",
             fmt.table(["item", "value"], [
                 ["commit", f"{(env['commit'] or {}).get('id', '?')}"
                            f"{' (uncommitted changes)' if (env['commit'] or {}).get('dirty') else ''}"],
                 ["device", f"{env['device_name']} ({env['cores']} cores)"],
                 *[[name, version] for name, version in env["libraries"].items()],
                 ["python", env["python"]], ["load", f"`{env['uptime']}`"]]), "",
             "Each results section below names the device, commit and load of the run that produced it (those "
             "can differ from this report's).", "", "## Formulas and limits", "", FORMULAS, ""]
    cpu_limits = cpu_limit_source(sources)
    if cpu_limits:
        hw = cpu_limits[0]
        lines += [f"Best measured CPU limits: copy {hw['mem_GBps']:.1f} GB/s, fp32 GEMM {hw['fp32_GFLOPs']:.1f} "
                  f"GFLOP/s on {hw.get('cpu', '?')} with {hw.get('threads', '?')} threads (`{cpu_limits[1]}`).", ""]
    by_kind: dict[str, list[Source]] = defaultdict(list)
    for source in sources:
        by_kind[source.kind].append(source)
    pytest_sources = by_kind["pytest-benchmark"]
    kernel_sources = [s for s in pytest_sources if any(r.provider for r in pytest_rows(s))]
    other_sources = [s for s in pytest_sources if s not in kernel_sources]
    sections = [
        ("Kernels and models: primeflow vs peers", kernel_sources,
         lambda s: render_pytest(s, plots_dir, rel, cpu_limits)),
        ("Scaling on CPU: time and memory vs N and V", by_kind["scaling"],
         lambda s: report_scaling.render(s, plots_dir, rel)),
        ("Refit: Megatron -> colocated vLLM weight sync", by_kind["refit"], render_refit),
        ("PRIME step breakdown vs outcome-only RLOO", by_kind["step_breakdown"],
         lambda s: render_step_breakdown(s, plots_dir, rel)),
        ("Learning efficiency: PRIME vs outcome-only RLOO", by_kind["learning_efficiency"],
         lambda s: render_learning_efficiency(s, plots_dir, rel)),
        ("PRM sweeps: the tiny presets' PRM settings", by_kind["prm_sweep"], report_sweep.render),
        ("PRM offline: can the implicit PRM learn the task without the RL loop?", by_kind["prm_offline"],
         report_sweep.render_offline),
        ("Other suites", other_sources, lambda s: render_pytest(s, plots_dir, rel, cpu_limits)),
        ("Hardware measurements", by_kind["hardware"], render_unknown_hardware),
        ("Unrecognised results files", by_kind["unknown"], render_unknown),
    ]
    for title, members, render in sections:
        lines += [f"## {title}", ""]
        if not members:
            lines += ["No results yet (no matching JSON in the results folder).", ""]
            continue
        for source in members:
            lines += [render(source), ""]
    if warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    return text


def render_unknown_hardware(source: Source) -> str:
    hw = source.data.get("hardware", {})
    env = source.data.get("environment", {})
    return "\n".join([f"### `{source.name}`", "", f"Command: `{source.command}`", "",
                      f"{hw.get('cpu', '?')}, {hw.get('threads', '?')} threads, at {env.get('utc', '?')} "
                      f"(load `{env.get('uptime', '?')}`): copy {hw.get('mem_GBps', float('nan')):.1f} GB/s, "
                      f"fp32 GEMM {hw.get('fp32_GFLOPs', float('nan')):.1f} GFLOP/s ({hw.get('method', '')}).", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render bench/results/*.json into one markdown report")
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--out", type=Path, default=Path("bench/REPORT.md"))
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"--results {args.results} is not a directory")
    build_report(args.results, args.out)
    print(f"wrote {args.out} (plots in {args.results / 'plots'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
