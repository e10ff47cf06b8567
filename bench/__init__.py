"""primeflow benchmarks.

Suites: `pytest bench/ --benchmark-only` (bench_*.py, pytest-benchmark JSON under bench/results/).
Scripts, run from the repository root: `python -m bench.bench_scaling` (memory/time vs N and V),
`python -m bench.hardware` (measured CPU limits), `python -m bench.report` (bench/REPORT.md from every JSON
result). This file makes `bench` a package so those `-m` entry points and the tests (which load it by path)
resolve the same modules; the suites still import their helpers (`memory`) by name through conftest.py.
"""
