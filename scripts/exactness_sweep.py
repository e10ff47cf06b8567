"""Run the suite's exactness and derived-bound tests over many seeds on every SIMD path this CPU has, and
record the worst case beside the bound.

    .venv/bin/python scripts/exactness_sweep.py --seeds 20 --out bench/results/exactness_<host>.json

Each (SIMD level, seed) pair is one pytest run with PRIMEFLOW_TEST_SEED=<seed> and ATEN_CPU_CAPABILITY=<level>
(ATen's switch, which also caps primeflow's C++ kernels: kernels/csrc/ops.cpp). Per test it reports the
runs, the failures (with the seed and level to replay them) and `bound_use`: the largest err/allowed ratio
any tolerance check of the test reached (tests/tolerances.py records it; 1.0 is at the bound, bitwise checks
record nothing). A level above what the CPU runs is skipped and named in the output: on an AVX2-only host
only `default` and `avx2` can be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Every test whose claim depends on the host's BLAS/SIMD: bitwise invariance, derived fp32 bounds, and the
# exact step-0 PRM/reference equality.
DEFAULT_TESTS = [
    "tests/kernels/test_linear_logprobs.py",
    "tests/kernels/test_prime_rewards.py",
    "tests/kernels/test_prime_seq_sums.py",
    "tests/kernels/test_token_logprobs_cpu.py",
    "tests/kernels/test_token_logprobs_triton.py",
    "tests/trainer/test_stages.py",
]


def cpu_levels() -> list[str]:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    levels = ["default"]
    if {"avx2", "fma"} <= flags:
        levels.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        levels.append("avx512")
    return levels


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_once(tests: list[str], level: str, seed: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "junit.xml"
        env = os.environ | {"PRIMEFLOW_TEST_SEED": str(seed), "ATEN_CPU_CAPABILITY": level}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml_path}",
                        *tests], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        if not xml_path.is_file():
            raise RuntimeError(f"pytest wrote no report for level={level} seed={seed}")
        results = []
        for case in ET.parse(xml_path).iter("testcase"):
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
                "skipped" if case.find("skipped") is not None else "passed")
            results.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                            "bound_use": float(props.get("bound_use", 0.0))})
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="seeds per SIMD level")
    parser.add_argument("--first-seed", type=int, default=1, help="the seeds are first-seed .. first-seed+N-1")
    parser.add_argument("--levels", nargs="*", default=None, help="SIMD levels (default: all this CPU runs)")
    parser.add_argument("--tests", nargs="*", default=DEFAULT_TESTS)
    parser.add_argument("--out", type=Path, help="JSON report")
    args = parser.parse_args()
    available = cpu_levels()
    levels = args.levels or available
    skipped = [lv for lv in levels if lv not in available]
    levels = [lv for lv in levels if lv in available]
    stats: dict[str, dict] = defaultdict(lambda: {"runs": 0, "failures": [], "worst_bound_use": 0.0})
    for level in levels:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for r in run_once(args.tests, level, seed):
                if r["outcome"] == "skipped":
                    continue
                s = stats[r["test"]]
                s["runs"] += 1
                s["worst_bound_use"] = max(s["worst_bound_use"], r["bound_use"])
                if r["outcome"] == "failed":
                    s["failures"].append({"level": level, "seed": seed})
            print(f"level={level} seed={seed}: {sum(len(s['failures']) for s in stats.values())} failures so far",
                  flush=True)
    report = {"cpu": cpu_model(), "levels": levels, "levels_not_on_this_cpu": skipped, "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
              "tests": dict(sorted(stats.items()))}
    failing = {k: v for k, v in stats.items() if v["failures"]}
    print(f"{len(stats)} tests x {len(levels)} levels x {args.seeds} seeds on {report['cpu']}: "
          f"{len(failing)} tests failed at least once; levels not on this CPU: {skipped or 'none'}")
    for name, s in sorted(stats.items(), key=lambda kv: -kv[1]["worst_bound_use"])[:15]:
        print(f"  worst bound use {s['worst_bound_use']:.3f}  {name}")
    for name, s in failing.items():
        print(f"  FAILED {name}: {s['failures']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
