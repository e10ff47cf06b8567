"""Verifier throughput (math scores/s, code tests/s, 2 workers) on ../shared/data, and a mixed adversarial
no-hang run.

Run (from the repo root, after `make install`):
    .venv/bin/pytest bench/bench_verifiers.py --benchmark-only --benchmark-json bench/results/<name>.json
Sizes (env overrides): PRIMEFLOW_BENCH_MATH_N=600 math samples, PRIMEFLOW_BENCH_CODE_N=40 code programs,
PRIMEFLOW_BENCH_ADV_N=1000 adversarial samples; PRIMEFLOW_BENCH_WORKERS=2.

- math: every eval reference answer (MATH-500, AIME24, AMC23, Minerva, OlympiadBench) boxed in a short
  response, alternately scored against its own reference (should be 1) and the next problem's (0). The
  baseline is the same work in-process on one core with no pool and no time limit (what the pool costs).
- code: real problems (CodeContests test + Codeforces samples), each with a fast program (a correct solution
  where we have one, else one that echoes its input), first 10 tests each: measures the sandbox machinery
  (namespace setup, fork per test, teardown), not the programs.
- adversarial: PRIMEFLOW_BENCH_ADV_N samples, 70 % math / 30 % code, mixing sympy hangs, huge and deeply
  nested LaTeX, candidate lists, truncations, infinite loops, fork/memory bombs, sleeps, output floods,
  secret reads, sockets and ordinary samples (about half). Asserts: finishes within the sum of its
  limits, every score in [0, 1], nothing left running (do not run verifier tests at the same time: the
  check counts every sandbox process on the machine); extra_info counts the timeouts.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
from primeflow.trainer.verifiers import code_counters, code_scores, math_counters, math_scores
from primeflow.trainer.verifiers.sandbox import MAX_SLOTS, UID_BASE, SandboxLimits

DATA = Path(os.environ.get("PRIMEFLOW_DATA", "/work/shared/data"))
WORKERS = int(os.environ.get("PRIMEFLOW_BENCH_WORKERS", 2))
MATH_N = int(os.environ.get("PRIMEFLOW_BENCH_MATH_N", 600))
CODE_N = int(os.environ.get("PRIMEFLOW_BENCH_CODE_N", 40))
ADV_N = int(os.environ.get("PRIMEFLOW_BENCH_ADV_N", 1000))
MATH_TIMEOUT_S = 5.0  # the default per-sample limit (math_api.DEFAULT_TIMEOUT_S)
ADV_MATH_TIMEOUT_S = 2.0  # shorter in the adversarial run, where ~15 % of the math samples hit it
CODE_TIMEOUT_S = 1.0


def _jsonl(rel: str) -> list[dict]:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"{path} not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _math_samples(n: int) -> tuple[list[str], list[str]]:
    answers = []
    for src in ("math500", "aime24", "amc23", "minerva_math", "olympiadbench"):
        answers += [r["answer"] for r in _jsonl(f"eval/{src}.jsonl")]
    responses, gts = [], []
    for i in range(n):
        a = answers[i % len(answers)]
        shown = a if i % 2 == 0 else answers[(i + 1) % len(answers)]
        responses.append(f"Step 1: work.\n\nTherefore the final answer is $\\boxed{{{shown}}}$.")
        gts.append(a)
    return responses, gts


def _sandbox_processes() -> int:
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                uid = os.stat(f"/proc/{d}").st_uid
            except OSError:
                continue
            n += UID_BASE <= uid < UID_BASE + MAX_SLOTS
    return n


def test_math_throughput(benchmark):
    responses, gts = _math_samples(MATH_N)
    math_scores(responses[:4], gts[:4], workers=WORKERS, timeout_s=MATH_TIMEOUT_S)  # start the pool
    # baseline: the same work in this process, one core, no pool, no limit
    from primeflow.trainer.verifiers.math_task import score_response

    t0 = time.perf_counter()
    base = [score_response(r, g) for r, g in zip(responses, gts, strict=True)]
    base_s = time.perf_counter() - t0
    before = math_counters()
    scores = benchmark.pedantic(
        math_scores,
        args=(responses, gts),
        kwargs={"workers": WORKERS, "timeout_s": MATH_TIMEOUT_S},
        rounds=1,
        iterations=1,
    )
    pool_s = benchmark.stats.stats.median
    after = math_counters()
    benchmark.extra_info.update(
        {
            "samples": len(responses),
            "workers": WORKERS,
            "scores_per_s": len(responses) / pool_s,
            "baseline_inprocess_scores_per_s": len(responses) / base_s,
            "speedup_vs_inprocess": base_s / pool_s,
            "mean_score": sum(scores) / len(scores),
            "agree_with_inprocess": sum(a == b for a, b in zip(scores, base, strict=True)),
            "timeouts": after["math/timeouts"] - before["math/timeouts"],
        }
    )


CUBES = (
    "import sys\nfrom math import isqrt\n"
    "def r(n, k):\n    x = int(round(n ** (1.0 / k)))\n    while x ** k > n: x -= 1\n"
    "    while (x + 1) ** k <= n: x += 1\n    return x\n"
    "d = list(map(int, sys.stdin.read().split()))\n"
    "print('\\n'.join(str(isqrt(n) + r(n, 3) - r(n, 6)) for n in d[1:1 + d[0]]))\n"
)
ECHO = "import sys\nsys.stdout.write(sys.stdin.read())\n"


def test_code_throughput(benchmark):
    rows = _jsonl("code/code_contests_test.jsonl") + _jsonl("code/codeforces_codeelo_samples.jsonl")
    rows = rows[:CODE_N]
    programs = [f"```python\n{CUBES if r['id'] == 'code_contests/test/140' else ECHO}```" for r in rows]
    tests = [r["tests"] for r in rows]
    n_tests = sum(min(10, len(t["inputs"])) for t in tests)
    before = code_counters()
    scores = benchmark.pedantic(
        code_scores,
        args=(programs, tests),
        kwargs={"workers": WORKERS, "timeout_s": 5.0, "max_tests": 10},
        rounds=1,
        iterations=1,
    )
    elapsed = benchmark.stats.stats.median
    after = code_counters()
    benchmark.extra_info.update(
        {
            "programs": len(programs),
            "tests": n_tests,
            "workers": WORKERS,
            "tests_per_s": n_tests / elapsed,
            "programs_per_s": len(programs) / elapsed,
            "mean_score": sum(scores) / len(scores),
            "timeouts": after["code/timeouts"] - before["code/timeouts"],
        }
    )
    assert _sandbox_processes() == 0


def _adversarial_math(rng: random.Random, answers: list[str]) -> tuple[str, str]:
    """One hostile (or, half the time, ordinary) math sample. About 1 in 7 hits the time limit."""
    kind = rng.randrange(20)
    if kind == 0:
        return "So $\\boxed{9^{9^{9^{9}}}}$.", "1"  # C-level integer power inside sympy: never returns
    if kind == 1:
        return "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}", "0"  # deep nesting (~4 s)
    if kind == 2:
        return "\\boxed{" + "+".join(["x"] * 3000) + "}", "3000x"  # long expression (~2 s)
    if kind in (3, 4):
        return "It is \\boxed{1} or \\boxed{2} or \\boxed{3}", "2"  # candidate list
    if kind in (5, 6):
        return "We get x = 12 and then", "12"  # truncated mid-reasoning
    if kind in (7, 8):
        return "".join(rng.choice("{}\\^_$()[]x1 ") for _ in range(5000)), "1"  # junk
    if kind == 9:
        rows = "\\\\".join("&".join("x" for _ in range(8)) for _ in range(8))
        return "\\boxed{\\begin{pmatrix}" + rows + "\\end{pmatrix}}", "1"
    if kind == 10:
        return "\\boxed{10^{10^{10}}}", "10^{10^{10}}"  # must not be evaluated numerically
    a = rng.choice(answers)  # ordinary: a real reference answer, right or wrong
    return f"Thus the answer is $\\boxed{{{a if kind % 2 else rng.choice(answers)}}}$.", a


ADV_CODE = [
    "while True:\n    pass",
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "b = []\nwhile True:\n    b.append(b'x' * (64 << 20))",
    "import time\ntime.sleep(100)",
    "while True:\n    print('y' * 100000)",
    "print(open('/etc/shadow').read())",
    "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\nprint('net')",
    "this is not python",
    "raise RuntimeError('boom')",
    "import subprocess\nsubprocess.Popen(['sleep', '100'], start_new_session=True)\nprint(input())",
]


def test_adversarial_no_hang(benchmark):
    rng = random.Random(0)
    n_math = int(ADV_N * 0.7)
    answers = [r["answer"] for r in _jsonl("eval/math500.jsonl")]
    math_items = [_adversarial_math(rng, answers) for _ in range(n_math)]
    code_items = []
    for i in range(ADV_N - n_math):
        program = ADV_CODE[i % len(ADV_CODE)] if i % 2 == 0 else "print(input())"  # half hostile
        code_items.append((f"```python\n{program}\n```", {"inputs": ["7\n"], "outputs": ["7"]}))
    # the worst case if every limit were hit, run `WORKERS` at a time, plus start-up slack
    grace = SandboxLimits().startup_grace_s
    bound = (n_math * ADV_MATH_TIMEOUT_S + len(code_items) * (CODE_TIMEOUT_S + 0.5 + grace)) / WORKERS + 60.0
    m0, c0 = math_counters(), code_counters()

    def run():
        ms = math_scores(
            [r for r, _ in math_items], [g for _, g in math_items], workers=WORKERS, timeout_s=ADV_MATH_TIMEOUT_S
        )
        cs = code_scores(
            [r for r, _ in code_items],
            [t for _, t in code_items],
            workers=WORKERS,
            timeout_s=CODE_TIMEOUT_S,
            max_tests=1,
        )
        return ms, cs

    t0 = time.monotonic()
    ms, cs = benchmark.pedantic(run, rounds=1, iterations=1)
    elapsed = time.monotonic() - t0
    m1, c1 = math_counters(), code_counters()
    assert elapsed < bound, f"adversarial run took {elapsed:.0f} s (bound {bound:.0f} s)"
    assert all(0.0 <= s <= 1.0 for s in ms + cs)
    assert _sandbox_processes() == 0
    benchmark.extra_info.update(
        {
            "samples": ADV_N,
            "math": n_math,
            "code": len(code_items),
            "workers": WORKERS,
            "elapsed_s": elapsed,
            "bound_s": bound,
            "math_timeouts": m1["math/timeouts"] - m0["math/timeouts"],
            "math_crashes": m1["math/crashes"] - m0["math/crashes"],
            "code_test_timeouts": c1["code/timeouts"] - c0["code/timeouts"],
            "code_killed": c1["code/killed"] - c0["code/killed"],
            "math_mean": sum(ms) / len(ms),
            "code_mean": sum(cs) / len(cs),
        }
    )
