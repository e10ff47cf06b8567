"""bench/report.py renders synthetic results into the right tables, ratios and plots.

The fixtures are written here with fresh random timings and memory figures, and every expected number
is computed in the test from those inputs (not by the report's code): the speedups, memory ratios,
achieved throughput and % of a limit, scaling slopes, step-breakdown sums and the learning-efficiency
crossing step. Missing optional sections and unreadable files must not break the report.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def _tables(markdown: str) -> list[list[str]]:
    """Every markdown table line except the |---| separators, as a list of cells."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")]
            for line in markdown.splitlines() if line.startswith("| ")]


def _row(markdown: str, *cells: str) -> list[str]:
    matches = [r for r in _tables(markdown) if all(c in r for c in cells)]
    assert len(matches) == 1, f"expected one table row with {cells}, found {matches}"
    return matches[0]


def _g(x: float) -> str:
    return f"{x:.3g}"


def _bench_entry(name: str, group: str | None, median: float, info: dict, module: str) -> dict:
    return {"group": group, "name": name, "fullname": f"bench/{module}.py::{name}",
            "stats": {"median": median, "min": median * 0.9, "mean": median, "rounds": 3}, "extra_info": info}


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def rng(seed) -> random.Random:
    return random.Random(seed)


def test_kernel_table_ratios_throughput_and_limit(tmp_path, rng, bench_module):
    report = bench_module("report")
    n, v = rng.randrange(1000, 5000), rng.randrange(10_000, 200_000)
    t = {"eager": rng.uniform(1, 5), "compile": rng.uniform(0.5, 2), "primeflow": rng.uniform(0.1, 1)}
    mem = {"eager": rng.randrange(10**8, 10**9), "compile": rng.randrange(10**6, 10**8),
           "primeflow": rng.randrange(10**5, 10**6)}
    copy_gbps = rng.uniform(5, 30)
    group = f"forward fp32 N={n} V={v}"
    benches = [_bench_entry(f"test_forward[fp32-{p}]", group, t[p],
                            {"provider": p, "peak_extra_bytes": mem[p], "threads": 2}, "bench_token_logprobs")
               for p in t]
    _write(tmp_path / "tok.json", {"benchmarks": benches, "machine_info": {"cpu": {"brand_raw": "TestCPU"}},
                                   "commit_info": {"id": "abc1234def"}, "datetime": "2026-01-01T00:00:00",
                                   "command": "PRIMEFLOW_BENCH_N=7 .venv/bin/pytest bench/bench_token_logprobs.py",
                                   "hardware": {"device": "cpu", "mem_GBps": copy_gbps, "fp32_GFLOPs": 100.0}})
    text = report.build_report(tmp_path, tmp_path / "out" / "REPORT.md")

    assert "Command: `PRIMEFLOW_BENCH_N=7 .venv/bin/pytest bench/bench_token_logprobs.py`" in text
    for peer in ("eager", "compile"):
        row = _row(text, peer, group)
        assert row[-2] == _g(t[peer] / t["primeflow"]) + "x"  # primeflow speedup vs this
        assert row[-1] == _g(mem["primeflow"] / mem[peer]) + "x"  # memory primeflow / this
    ours = _row(text, "**primeflow**", group)
    bandwidth = n * v * 4 / t["primeflow"]  # fp32 logits read once
    assert ours[4] == f"{_g(bandwidth / 1e9)} GB/s"
    assert ours[5] == f"{100 * bandwidth / (copy_gbps * 1e9):.1f} %"
    assert ours[-2:] == ["—", "—"]
    assert (tmp_path / "out" / "REPORT.md").read_text() == text
    plots = list((tmp_path / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == PNG for p in plots)
    assert "](../plots/" in text  # linked relative to the report


def test_paired_rows_gpu_limit_and_flops(tmp_path, rng, bench_module):
    """Paired extra_info becomes one row per provider; a bf16 CUDA row is rated against 989 TFLOP/s."""
    report = bench_module("report")
    n, h, v = 4096, 3584, 152064
    wall = {"compile": rng.uniform(0.05, 0.2), "primeflow": rng.uniform(0.02, 0.1)}
    info = {f"{p}_wall_s": s for p, s in wall.items()} | {f"{p}_cpu_s": s for p, s in wall.items()}
    info.update(N=n, H=h, V=v, device="cuda", dtype="torch.bfloat16")
    group = f"linear_token_logprobs paired forward cuda N={n} H={h} V={v}"
    fwd = rng.uniform(0.03, 0.08)
    benches = [_bench_entry("test_paired_vs_compile[forward]", group, 0.0, info, "bench_linear_logprobs"),
               _bench_entry("test_forward[primeflow]", None, fwd,
                            {"provider": "primeflow", "N": n, "H": h, "V": v, "device": "cuda",
                             "dtype": "torch.bfloat16", "peak_extra_bytes": 123}, "bench_linear_logprobs")]
    _write(tmp_path / "gpu.json", {"benchmarks": benches,
                                   "primeflow_environment": {"device_name": "NVIDIA H100 80GB HBM3"}})
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    case = f"paired forward cuda N={n} H={h} V={v}"
    assert _row(text, case, "compile")[-2] == _g(wall["compile"] / wall["primeflow"]) + "x"
    tflops = 2 * n * h * v / fwd
    row = _row(text, f"forward N={n} H={h} V={v}", "**primeflow**")
    assert row[4] == f"{_g(tflops / 1e12)} TFLOP/s"
    assert row[5] == f"{100 * tflops / 989e12:.1f} %"
    assert "vendor figure for H100" in text


def test_scaling_slopes_tables_and_plots(tmp_path, rng, bench_module):
    """Eager's peak grows as 8 B per logit element (two fp32 [N, V] tensors), ours as c0 + b*N: the fitted
    per-element slopes and the per-point ratio must come out of the report."""
    scaling = bench_module("report_scaling")
    report = bench_module("report")
    b_row, c0 = rng.randrange(8, 64), rng.randrange(2**20, 2**24)
    points = []
    for sweep, shapes in (("N", [(n, 32768) for n in (256, 512, 1024, 2048)]),
                          ("V", [(1024, v) for v in (8192, 16384, 65536)])):
        for n, v in shapes:
            for provider, peak in (("eager", 8 * n * v), ("primeflow", c0 + b_row * n)):
                points.append(dict(op="linear_token_logprobs", kind="forward", sweep=sweep, N=n, V=v, H=64,
                                   provider=provider, seconds=rng.uniform(0.1, 1), cpu_seconds=0.5,
                                   peak_extra_bytes=peak, peak_extra_beyond_gradients=peak, flops=2 * n * 64 * v,
                                   load1=1.0))
    points.append(dict(op="linear_token_logprobs", kind="forward", sweep="N", N=8192, V=32768, H=64,
                       provider="eager", skipped="wall-clock budget spent"))
    _write(tmp_path / "scal.json", {"kind": "scaling", "command": "python -m bench.bench_scaling", "points": points,
                                    "hardware": {"device": "cpu", "mem_GBps": 10.0, "fp32_GFLOPs": 50.0}})
    fits = {f["provider"]: f for f in scaling.fits(points)}
    assert fits["eager"]["per_element_N"] == pytest.approx(8.0)
    assert fits["eager"]["per_element_V"] == pytest.approx(8.0)
    assert fits["primeflow"]["slope_N"] == pytest.approx(b_row)
    assert fits["primeflow"]["slope_V"] == pytest.approx(0.0, abs=1e-6)
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    eager = next(p for p in points if p["provider"] == "eager" and p["N"] == 2048)
    ours = next(p for p in points if p["provider"] == "primeflow" and p["N"] == 2048)
    row = _row(text, "2048", "32768")
    assert row[4] == f"{_g(eager['seconds'] / ours['seconds'])}x (1x CPU)"  # both recorded 0.5 CPU s
    assert row[9] == _g(ours["peak_extra_bytes"] / eager["peak_extra_bytes"]) + "x"
    assert "Skipped 1 point(s): wall-clock budget spent" in text
    assert (tmp_path / "plots" / "scal_linear_token_logprobs_forward.png").read_bytes()[:8] == PNG


def test_step_breakdown_and_learning_efficiency(tmp_path, rng, bench_module):
    report = bench_module("report")
    stages = ["time/rollout", "time/verify", "time/old_logprobs", "time/prm", "time/advantage", "time/update",
              "time/refit"]
    modes = {m: {s: rng.uniform(0.1, 10) for s in stages} | {"tokens": rng.randrange(10**4, 10**5)}
             for m in ("prime", "rloo")}
    del modes["rloo"]["time/prm"]  # outcome-only RLOO has no PRM stage
    _write(tmp_path / "step_breakdown_cpu.json",
           {"kind": "step_breakdown", "command": "primeflow bench step", "gpus": 2, "config": {"K": 4},
            "modes": modes})
    step_at = rng.randrange(3, 8)  # PRIME's accuracy jumps above RLOO's final accuracy here
    curves = {"prime": {}, "rloo": {}}
    for seed in (0, 1, 2):
        curves["rloo"][str(seed)] = [[s, 10.0 * s, 0.05 * s] for s in range(1, 11)]
        curves["prime"][str(seed)] = [[s, 12.0 * s, 0.6 + 0.02 * seed if s >= step_at else 0.1] for s in range(1, 11)]
    _write(tmp_path / "learning_efficiency.json",
           {"command": "primeflow bench learning", "seeds": [0, 1, 2], "curves": curves})
    # The same curves judged step by step (window 1): the pre-smoothing definition.
    _write(tmp_path / "learning_efficiency_w1.json",
           {"command": "primeflow bench learning w1", "seeds": [0, 1, 2], "curves": curves, "window": 1})
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")

    total = {m: sum(v for k, v in modes[m].items() if k.startswith("time/")) for m in modes}
    step = _row(text, "**step**")
    assert step[1:] == [f"{total['prime']:.3f}", f"{total['rloo']:.3f}", _g(total["prime"] / total["rloo"]) + "x"]
    assert _row(text, "prm")[2] == "—"
    per_gpu = _row(text, "tokens/s/GPU")
    assert per_gpu[1] == f"{modes['prime']['tokens'] / total['prime'] / 2:.1f}"
    default, w1 = (text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
                   for name in ("learning_efficiency.json", "learning_efficiency_w1.json"))
    # Default window: 20 % of 10 steps = 2. RLOO's final accuracy is mean(0.45, 0.50) = 0.475 on every seed;
    # PRIME's per-seed finals are 0.60, 0.62, 0.64 (sd 0.02). PRIME's 2-step trailing mean is (0.1 + 0.62) / 2
    # = 0.36 at step_at and 0.62 from step_at + 1: it reaches 0.475 one step after the jump.
    prime, rloo = _row(default, "prime", "10"), _row(default, "rloo", "10")
    assert prime[2] == "0.620 ± 0.020" and rloo[2] == "0.475 ± 0.000"
    assert prime[4] == str(step_at + 1)
    assert prime[5] == f"{100 * (step_at + 1) / 10:.1f} %"
    assert rloo[4] == "10"  # the baseline reaches its own final accuracy at its last step
    # Window 1: RLOO's final is its last step's 0.5, first reached by PRIME at the jump itself.
    prime_w1 = _row(w1, "prime", "10")
    assert prime_w1[2] == "0.620 ± 0.020" and _row(w1, "rloo", "10")[2] == "0.500 ± 0.000"
    assert prime_w1[4] == str(step_at)
    assert (tmp_path / "plots" / "step_breakdown_cpu.png").read_bytes()[:8] == PNG
    assert (tmp_path / "plots" / "learning_efficiency.png").read_bytes()[:8] == PNG


def test_optional_sections_missing_and_bad_files(tmp_path, bench_module):
    report = bench_module("report")
    (tmp_path / "broken.json").write_text("{not json")
    _write(tmp_path / "refit_like.json", {"weights_gb": 1.5, "seconds": 2.0})
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    for title in ("PRIME step breakdown vs outcome-only RLOO", "Learning efficiency: PRIME vs outcome-only RLOO",
                  "Scaling on CPU: time and memory vs N and V"):
        section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
        assert "No results yet" in section
    assert "broken.json: not readable JSON" in text
    assert "| weights_gb | 1.5 |" in text


def test_cli_rejects_missing_results_dir(tmp_path, capsys, bench_module):
    report = bench_module("report")
    with pytest.raises(SystemExit):
        report.main(["--results", str(tmp_path / "nope"), "--out", str(tmp_path / "R.md")])
    assert "is not a directory" in capsys.readouterr().err


def test_results_without_limits_use_the_best_measured_cpu_limits(tmp_path, rng, bench_module):
    """Each figure comes from the hardware file that measured it best, and the table says which files."""
    report = bench_module("report")
    mem = sorted(rng.uniform(2, 30) for _ in range(2))
    gemm = sorted(rng.uniform(20, 300) for _ in range(2))
    _write(tmp_path / "hw_a.json", {"kind": "hardware", "hardware": {"mem_GBps": mem[1], "fp32_GFLOPs": gemm[0]}})
    _write(tmp_path / "hw_b.json", {"kind": "hardware", "hardware": {"mem_GBps": mem[0], "fp32_GFLOPs": gemm[1]}})
    n, v, seconds = 512, 1000, rng.uniform(0.01, 0.1)
    group = f"forward fp32 N={n} V={v}"
    benches = [_bench_entry(f"test_forward[fp32-{p}]", group, seconds * (2 if p == "eager" else 1),
                            {"provider": p}, "bench_token_logprobs") for p in ("eager", "primeflow")]
    _write(tmp_path / "old.json", {"benchmarks": benches})
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    assert _row(text, "**primeflow**", group)[5] == f"{100 * n * v * 4 / seconds / (mem[1] * 1e9):.1f} %"
    assert "Limits: measured by `hw_a.json, hw_b.json` (another run on this machine)" in text


def test_refit_table_bucket_sweep_and_generation(tmp_path, rng, bench_module):
    report = bench_module("report")
    refit_gbps, copy_gbps = rng.uniform(0.1, 2.0), rng.uniform(5.0, 20.0)
    sweep = [{"bucket_mb": mb, "buckets": rng.randrange(1, 200), "seconds_min": rng.uniform(1.0, 3.0),
              "gb_per_s": rng.uniform(0.5, 2.0)} for mb in (1, 16, 256)]
    result = {"size": "0.5B", "engine_init_s": 9.0, "first_refit_s": 4.5,
              "copy_baseline": {"bytes": 2 * 10**9, "gb_per_s": copy_gbps},
              "refit": {"bytes": 2 * 10**9, "buckets": 7, "bucket_mb": 256, "seconds_min": 1.5,
                        "seconds_median": 2.0, "gb_per_s": refit_gbps},
              "stream_only": {"seconds_min": 0.125}, "bucket_sweep": sweep,
              "generation": {"prompts": 16, "n": 4, "new_tokens": 4096, "tokens_per_s": 5053.4}}
    _write(tmp_path / "cpu_refit.json", {"kind": "refit", "command": "python -m bench.bench_refit",
                                         "layout": {"world": 2, "trainer_tp": 2, "trainer_pp": 1,
                                                    "trainer_dp": 1, "vllm_tp": 1},
                                         "dtype": "float32", "results": [result]})
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")
    section = text.split("## Refit", 1)[1].split("\n## ", 1)[0]
    assert "trainer TP 2 x PP 1 x DP 1, vLLM TP 1" in section
    row = _row(section, "0.5B", "7 x 256 MiB")
    assert row[5:8] == [f"{refit_gbps:.2f}", f"{copy_gbps:.2f}", f"{100 * refit_gbps / copy_gbps:.1f} %"]
    best = min(s["seconds_min"] for s in sweep)
    for s in sweep:
        assert _row(section, f"{s['bucket_mb']} MiB")[4] == _g(s["seconds_min"] / best) + "x"
    assert _row(section, "16 x 4")[3] == "5053"
    assert "cpu_refit.json" not in text.split("## Unrecognised results files", 1)[1]


def test_prime_rewards_rows_flops_ratios_and_pair(tmp_path, rng, bench_module):
    """bench_prime_rewards.py rows: 2·N·H·V flops per model (times `models`), the fused-vs-separate ratios of
    the sequential cases and of the interleaved pair; a row without a group or provider in extra_info (older
    files) is still attributed to prime_token_rewards and to its provider from the test id."""
    report = bench_module("report")
    n, h, v = rng.randrange(256, 4096), rng.randrange(64, 1024), rng.randrange(10_000, 160_000)
    t = {p: rng.uniform(0.5, 5) for p in ("eager", "compile", "separate", "primeflow")}
    mem = {p: rng.randrange(1, 10**9) for p in t}
    gflops = rng.uniform(50, 500)
    group = f"prime_token_rewards forward cpu N={n} H={h} V={v} models=3"
    info = dict(device="cpu", dtype="torch.float32", N=n, H=h, V=v, models=3, threads=2)
    benches = [_bench_entry(f"test_forward[{p}]", group, t[p], dict(info, provider=p, peak_extra_bytes=mem[p]),
                            "bench_prime_rewards") for p in t]
    wall = {"separate": rng.uniform(1, 3), "primeflow": rng.uniform(1, 3)}
    cpu = {p: rng.uniform(1, 3) for p in wall}
    paired = dict(info, **{f"{p}_wall_s": wall[p] for p in wall}, **{f"{p}_cpu_s": cpu[p] for p in wall})
    pair_group = f"prime_token_rewards paired forward cpu N={n} H={h} V={v} models=3"
    benches.append(_bench_entry("test_paired_vs_separate", pair_group, 1e-6, paired, "bench_prime_rewards"))
    _write(tmp_path / "prime.json", {"benchmarks": benches,
                                     "hardware": {"device": "cpu", "mem_GBps": 10.0, "fp32_GFLOPs": gflops}})
    t_old = rng.uniform(0.5, 5)
    _write(tmp_path / "prime_old.json", {"benchmarks": [_bench_entry(
        "test_forward[separate]", None, t_old, {"N": n, "H": h, "V": v, "models": 2}, "bench_prime_rewards")]})
    text = report.build_report(tmp_path, tmp_path / "REPORT.md")

    work = 3 * 2 * n * h * v  # three (hidden, weight) models, one [N, H] x [H, V] GEMM each
    case = f"forward cpu N={n} H={h} V={v} models=3"
    for p in t:
        row = _row(text, case, f"**{p}**" if p == "primeflow" else p)
        assert row[4] == fmt_rate(work / t[p])
        assert row[5] == f"{100 * work / t[p] / (gflops * 1e9):.1f} %"
        if p != "primeflow":
            assert row[-2] == _g(t[p] / t["primeflow"]) + "x"
            assert row[-1] == _g(mem["primeflow"] / mem[p]) + "x"
    pair_case = f"paired forward cpu N={n} H={h} V={v} models=3"
    sep = _row(text, pair_case, "separate")
    assert sep[2] == f"{_g(wall['separate'])} s (CPU {_g(cpu['separate'])} s)"
    assert sep[-2] == _g(wall["separate"] / wall["primeflow"]) + "x"
    assert _row(text, pair_case, "**primeflow**")[4] == fmt_rate(work / wall["primeflow"])
    old = _row(text, f"forward N={n} H={h} V={v}", "separate")
    assert old[4] == fmt_rate(2 * 2 * n * h * v / t_old)  # models=2
    assert "#### prime_token_rewards" in text and "#### prime_rewards" not in text


def fmt_rate(flops_per_s: float) -> str:
    """The report's throughput cell, written out here: GFLOP/s below 1 TFLOP/s, 3 significant digits."""
    return f"{flops_per_s / 1e12:.3g} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.3g} GFLOP/s"
