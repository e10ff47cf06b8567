"""Refit section of the report: Megatron -> colocated vLLM weight sync, rendered from bench/bench_refit.py's JSON.

    {"kind": "refit", "command": ..., "environment": {...}, "layout": {"world", "trainer_tp", "trainer_pp",
     "trainer_dp", "vllm_tp"}, "dtype": "float32",
     "results": [{"size": "0.5B", "engine_init_s": s, "first_refit_s": s,
                  "copy_baseline": {"bytes", "gb_per_s", "clone_gb_per_s"},
                  "refit": {"bytes", "buckets", "tensors", "bucket_mb", "seconds_min", "seconds_median", "gb_per_s"},
                  "stream_only": {"seconds_min", "gb_per_s"},          # trainer side alone, no vLLM
                  "bucket_sweep": [{"bucket_mb", "buckets", "seconds_min", "gb_per_s"}, ...],   # optional
                  "generation": {"prompts", "n", "new_tokens", "tokens_per_s"}}]}             # optional
GB/s = bytes of the full HF-layout model delivered to vLLM / seconds_min. The copy baseline is `copy_` of the
same bytes into preallocated buffers in the same run: the memory-bandwidth floor a refit cannot beat.
"""

from __future__ import annotations

from typing import Any

from . import report_fmt as fmt


def _refit_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        refit, copy, stream = r.get("refit") or {}, r.get("copy_baseline") or {}, r.get("stream_only") or {}
        rows.append([
            str(r.get("size", "?")), fmt.nbytes(refit.get("bytes")),
            f"{refit.get('buckets', '?')} x {refit.get('bucket_mb', '?')} MiB",
            fmt.seconds(refit.get("seconds_min")), fmt.seconds(refit.get("seconds_median")),
            f"{refit.get('gb_per_s', float('nan')):.2f}", f"{copy.get('gb_per_s', float('nan')):.2f}",
            fmt.percent(refit.get("gb_per_s") / copy["gb_per_s"]) if refit.get("gb_per_s") and copy.get("gb_per_s")
            else "—",
            fmt.seconds(stream.get("seconds_min")), fmt.seconds(r.get("first_refit_s")),
            fmt.seconds(r.get("engine_init_s"))])
    return rows


def _sweep_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        sweep = r.get("bucket_sweep") or []
        if not sweep:
            continue
        best = min(sweep, key=lambda s: s.get("seconds_min", float("inf")))
        lines += [f"Bucket sweep on {r.get('size')} (min over rounds; interleaved so load drifts hit every size):", "",
                  fmt.table(["bucket", "buckets", "refit (min)", "GB/s", "vs best"], [
                      [f"{s['bucket_mb']} MiB", str(s.get("buckets", "?")), fmt.seconds(s.get("seconds_min")),
                       f"{s.get('gb_per_s', float('nan')):.2f}",
                       fmt.ratio(s["seconds_min"] / best["seconds_min"]) if best.get("seconds_min") else "—"]
                      for s in sweep]), ""]
    return lines


def render_refit(source) -> str:
    data = source.data
    results: list[dict[str, Any]] = data.get("results") or []
    layout = data.get("layout") or {}
    env = data.get("environment") or {}
    lines = [f"### `{source.name}`", "", f"Command: `{source.command}`", "",
             f"Layout: world {layout.get('world', '?')}, trainer TP {layout.get('trainer_tp', '?')} x PP "
             f"{layout.get('trainer_pp', '?')} x DP {layout.get('trainer_dp', '?')}, vLLM TP "
             f"{layout.get('vllm_tp', '?')}; {data.get('dtype', '?')}. Device: {env.get('device_name', '?')}, commit "
             f"{str((env.get('commit') or {}).get('id', '?'))[:10]}, load `{env.get('uptime', '?')}` before and "
             f"`{(data.get('load_after') or {}).get('uptime', '?')}` after.", "",
             fmt.table(["model", "bytes", "buckets", "refit (min)", "refit (median)", "GB/s", "copy_ GB/s",
                        "% of copy_", "trainer side alone", "first refit", "engine init"], _refit_rows(results)), ""]
    lines += _sweep_lines(results)
    gen = [(r.get("size"), r["generation"]) for r in results if r.get("generation")]
    if gen:
        lines += ["Generation after the refit (the synced engine still samples):", "",
                  fmt.table(["model", "prompts x samples", "new tokens", "tokens/s"], [
                      [str(size), f"{g.get('prompts', '?')} x {g.get('n', '?')}", str(g.get("new_tokens", "?")),
                       f"{g.get('tokens_per_s', float('nan')):.0f}"] for size, g in gen]), ""]
    return "\n".join(lines)
