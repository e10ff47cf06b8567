"""The scaling section of the report: tables, least-squares memory slopes and plots from a
`{"kind": "scaling"}` file written by bench/bench_scaling.py.

Memory shown is the peak extra resident set of one call; for forward+backward, beyond the returned
gradients (N·H + V·H fp32, which every provider must allocate). Slopes are least-squares fits of that peak
against N (N sweep, fixed V) and against V (V sweep, fixed N), divided by the fixed dimension to give bytes
per logit element: a materialised fp32 [N, V] tensor costs 4 B per element, so eager's slope counts how many
such tensors are alive at its peak, and a fused path that never builds [N, V] has a slope near 0.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from . import report_fmt as fmt
from .report_plots import scaling_figure

PROVIDERS = ("eager", "primeflow")


def memory(point: dict[str, Any]) -> int:
    return int(point.get("peak_extra_beyond_gradients", point.get("peak_extra_bytes", 0)))


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys against xs (None with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx


def grouped(points: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[tuple[int, int], dict[str, dict]]]:
    """{(op, pass, sweep): {(N, V): {provider: point}}} over measured (not skipped) points."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for p in points:
        if "skipped" in p:
            continue
        out[(p["op"], p["kind"], p["sweep"])][(p["N"], p["V"])][p["provider"]] = p
    return out


def fits(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (op, pass, provider): bytes per logit element from the N sweep and from the V sweep."""
    rows = []
    groups = grouped(points)
    for (op, kind) in sorted({(o, k) for o, k, _ in groups}):
        for provider in PROVIDERS:
            row: dict[str, Any] = {"op": op, "kind": kind, "provider": provider}
            for sweep, axis, fixed in (("N", 0, 1), ("V", 1, 0)):
                cells = groups.get((op, kind, sweep), {})
                pts = [(key, by[provider]) for key, by in sorted(cells.items()) if provider in by]
                if not pts:
                    continue
                s = slope([key[axis] for key, _ in pts], [memory(p) for _, p in pts])
                row[f"slope_{sweep}"] = s
                row[f"fixed_{sweep}"] = pts[0][0][fixed]
                row[f"per_element_{sweep}"] = None if s is None else s / pts[0][0][fixed]
                row[f"largest_{sweep}"] = (pts[-1][0], memory(pts[-1][1]))
            rows.append(row)
    return rows


def _time(point: dict[str, Any] | None) -> str:
    if point is None:
        return "—"
    cpu = point.get("cpu_seconds")
    return fmt.seconds(point["seconds"]) + (f" ({fmt.seconds(cpu)} CPU)" if cpu is not None else "")


def _speedup(eager: dict[str, Any] | None, ours: dict[str, Any] | None) -> str:
    """eager/primeflow time, wall and (when recorded) process CPU seconds; on a loaded machine the CPU ratio
    is the steadier one (neighbours steal wall time, not this process's instructions)."""
    if not eager or not ours:
        return "—"
    text = fmt.ratio(eager["seconds"] / ours["seconds"])
    if eager.get("cpu_seconds") and ours.get("cpu_seconds"):
        text += f" ({fmt.ratio(eager['cpu_seconds'] / ours['cpu_seconds'])} CPU)"
    return text


def _sweep_table(cells: dict[tuple[int, int], dict[str, dict]], gemm_flops: float | None, bwd: bool) -> str:
    header = ["N", "V", "eager time (wall, CPU)", "primeflow time (wall, CPU)", "primeflow speedup (wall, CPU)",
              "primeflow GFLOP/s", "% of measured fp32 GEMM", "eager peak" + (" beyond grads" if bwd else ""),
              "primeflow peak" + (" beyond grads" if bwd else ""), "memory primeflow/eager",
              "fp32 [N,V] size", "load (1 min)"]
    body = []
    for (n, v), by in sorted(cells.items()):
        eager, ours = by.get("eager"), by.get("primeflow")
        speed = ours["flops"] / ours["seconds"] if ours else None
        body.append([
            str(n), str(v), _time(eager), _time(ours),
            _speedup(eager, ours),
            f"{speed / 1e9:.3g}" if speed else "—",
            fmt.percent(speed * 1e-9 / gemm_flops) if speed and gemm_flops else "—",
            fmt.nbytes(memory(eager)) if eager else "—", fmt.nbytes(memory(ours)) if ours else "—",
            fmt.ratio(memory(ours) / memory(eager)) if eager and ours and memory(eager) > 0 else "—",
            fmt.nbytes(n * v * 4), "/".join(f"{by[p]['load1']:.1f}" for p in PROVIDERS if p in by)])
    return fmt.table(header, body)


def render(source, plots_dir: Path, rel: str) -> str:
    """Markdown for one scaling file; writes its plots into plots_dir (linked as rel/<name>)."""
    data = source.data
    env = data.get("environment", {})
    hw = data.get("hardware", {})
    points = data.get("points", [])
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`", ""]
    lines.append(f"Device: {env.get('device_name', '?')}, {env.get('torch_threads', '?')} torch threads, "
                 f"commit {str((env.get('commit') or {}).get('id', '?'))[:10]}"
                 f"{' (dirty)' if (env.get('commit') or {}).get('dirty') else ''}, started {env.get('utc', '?')}, "
                 f"sweep wall time {data.get('wall_s', float('nan')):.0f} s, dtype {data.get('dtype', '?')}.")
    after = (data.get("load_after") or {}).get("uptime", "?")
    lines.append(f"Load: before `{env.get('uptime', '?')}`; after `{after}`.")
    if hw:
        lines.append(f"Measured limits in this run: copy {hw.get('mem_GBps', float('nan')):.1f} GB/s, fp32 GEMM "
                     f"{hw.get('fp32_GFLOPs', float('nan')):.1f} GFLOP/s ({hw.get('method', '')}).")
    skipped = [p for p in points if "skipped" in p]
    if skipped:
        lines.append(f"Skipped {len(skipped)} point(s): {skipped[0]['skipped']}.")
    lines.append("")
    fit_rows = fits(points)
    if fit_rows:
        lines += ["Memory slopes (least squares; bytes per logit element = slope / fixed dimension; an fp32 "
                  "[N, V] tensor is 4 B per element):", ""]
        body = []
        for f in fit_rows:
            largest = f.get("largest_N") or f.get("largest_V")
            body.append([f["op"], f["kind"], f["provider"],
                         fmt.nbytes(f.get("slope_N")) + f" per row (V={f.get('fixed_N', '?')})"
                         if f.get("slope_N") is not None else "—",
                         f"{f['per_element_N']:.3g} B" if f.get("per_element_N") is not None else "—",
                         fmt.nbytes(f.get("slope_V")) + f" per vocab entry (N={f.get('fixed_V', '?')})"
                         if f.get("slope_V") is not None else "—",
                         f"{f['per_element_V']:.3g} B" if f.get("per_element_V") is not None else "—",
                         f"{fmt.nbytes(largest[1])} at N={largest[0][0]}, V={largest[0][1]}" if largest else "—"])
        lines += [fmt.table(["op", "pass", "provider", "N sweep slope", "per element", "V sweep slope",
                             "per element", "peak at the largest N-sweep point"], body), ""]
    groups = grouped(points)
    gemm = hw.get("fp32_GFLOPs")
    for (op, kind) in sorted({(o, k) for o, k, _ in groups}):
        lines += [f"#### {op}, {kind}", ""]
        for sweep in ("N", "V"):
            cells = groups.get((op, kind, sweep))
            if cells:
                lines += [f"{sweep} sweep:", "", _sweep_table(cells, gemm, kind == "forward+backward"), ""]
        name = f"{Path(source.name).stem}_{op}_{kind.replace('+', '_')}.png"
        if scaling_figure({s: groups.get((op, kind, s), {}) for s in ("N", "V")}, f"{op} {kind} (CPU)",
                          plots_dir / name, beyond_gradients=kind == "forward+backward"):
            lines += [f"![{op} {kind} scaling]({rel}/{name})", ""]
    return "\n".join(lines)
