# primeflow: `make train` runs the embedded default, `make test` runs the full test suite.
# Both create the virtualenv (.venv) and install everything on first use; later runs reuse it.
# On a machine with CUDA the GPU extras are installed instead of the CPU ones.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(HAS_CUDA),gpu,cpu),dev
# Everything the installed result depends on: reinstall when any of it changes.
INSTALL_INPUTS := setup.py pyproject.toml CMakeLists.txt $(wildcard kernels/csrc/*)
STAMP := $(VENV)/.primeflow-installed

.PHONY: install train test validate-kernels build-ext bench bench-report report clean

install: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
	bash scripts/install.sh "$(VENV)" "$(EXTRAS)"
	touch $@

train: install
	$(VENV)/bin/primeflow train

# The README's test command: the whole suite, exactly what CI runs.
test: install
	$(VENV)/bin/pytest; rc=$$?; echo $$rc > $(VENV)/.pytest-exit-code; exit $$rc

# Kernel checks against the references. CPU host: the Triton kernels under the interpreter and the C++ ops.
# CUDA host: the interpreter modules skip (saying so) and the compiled kernels are checked against float64.
validate-kernels: install
	$(VENV)/bin/pytest tests/kernels -v -rs
	@if $(VENV)/bin/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(VENV)/bin/python scripts/gpu_smoke.py --device cuda --skip-trainer --out bench/results/validate_kernels_cuda.json; \
	else echo "validate-kernels: no CUDA device: the Triton kernels ran under the interpreter only"; fi

# Incremental rebuild of the C++ extension in place (development; `install` does a full build).
build-ext:
	$(PY) setup.py -q build_ext --inplace

bench: install
	$(VENV)/bin/pytest bench --benchmark-only

# The CPU performance report from scratch (bench/REPORT.md + bench/results/plots): measured CPU limits, every
# kernel suite, weight-sync (refit) timings, the N/V scaling sweep, PRIME vs outcome-only RLOO (3 seeds).
BENCH_RESULTS ?= bench/results
BENCH_TAG ?= cpu_$(shell date -u +%Y%m%d)
# Scratch space of the PRIME-vs-RLOO runs (SFT model, run dirs); emptied first so nothing is reused.
BENCH_WORK ?= /tmp/primeflow-bench-work
BENCH_SUITES := $(filter-out bench/bench_scaling.py bench/bench_refit.py,$(wildcard bench/bench_*.py))
bench-report: install
	$(PY) -m bench.hardware --out $(BENCH_RESULTS)/$(BENCH_TAG)_hardware.json
	set -e; for suite in $(BENCH_SUITES); do name=$$(basename $$suite .py); \
	  $(VENV)/bin/pytest $$suite --benchmark-only --benchmark-json $(BENCH_RESULTS)/$(BENCH_TAG)_$${name#bench_}.json; done
	$(PY) -m bench.bench_refit --out $(BENCH_RESULTS)/$(BENCH_TAG)_refit.json
	$(PY) -m bench.bench_scaling --out $(BENCH_RESULTS)/$(BENCH_TAG)_scaling.json
	rm -rf $(BENCH_WORK)
	$(PY) -m bench.prime_vs_rloo --steps 30 --seeds 0 1 2 --work $(BENCH_WORK) --out $(BENCH_RESULTS)
	$(PY) -m bench.report --results $(BENCH_RESULTS) --out bench/REPORT.md

# Re-render bench/REPORT.md from the committed results only.
report: install
	$(PY) -m bench.report --results $(BENCH_RESULTS) --out bench/REPORT.md

clean:
	rm -rf build *.egg-info $(VENV)
