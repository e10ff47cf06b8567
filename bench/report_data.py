"""Load bench/results/*.json and normalise pytest-benchmark entries into rows the report can tabulate.

A results file is one of (detected from its content, never from its name):
  - pytest-benchmark output (`benchmarks` list): one Row per benchmark, or one per provider for the paired
    benchmarks whose extra_info holds `<provider>_wall_s`;
  - `{"kind": "scaling", ...}` (bench/bench_scaling.py), `{"kind": "hardware", ...}` (bench/hardware.py),
    `{"kind": "refit", ...}` (bench/bench_refit.py);
  - step breakdown / learning efficiency (schemas in report_sections.py; kind or file-name prefix);
  - PRM sweeps (bench/prm_sweep.py, rendered by report_sweep.py; kind or file-name prefix);
  - anything else: listed with its scalar fields.

Work counted per row (the formulas are printed in the report):
  - extra_info `flops` / `bytes_moved` when a benchmark records them (preferred);
  - linear_token_logprobs: 2·N·H·V flops forward, 6·N·H·V forward+backward (forward, dhidden and dweight
    GEMMs; a recompute-in-backward design executes 8·N·H·V, the extra 2·N·H·V is not counted as useful);
  - prime_token_rewards: 2·N·H·V flops per model given as (hidden, weight), times extra_info `models` (3 when
    absent; bench_prime_rewards.py records `flops` itself);
  - token_logprobs: N·V·elt bytes forward (logits read once), 3·N·V·elt forward+backward (forward read,
    backward read, gradient write), elt = 4 (fp32) or 2 (bf16);
  - otherwise extra_info `bytes_read` (the op's inputs read once).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OURS = ("primeflow", "fused")
KNOWN_PROVIDERS = ("primeflow", "fused", "unfused", "separate", "eager", "compile", "reference", "liger", "verl",
                   "cce", "torch")
MODULE_KERNELS = {"bench_token_logprobs": "token_logprobs", "bench_linear_logprobs": "linear_token_logprobs",
                  "bench_prime_rewards": "prime_token_rewards",
                  "bench_models": "Megatron model forward+backward", "bench_verifiers": "verifiers"}
COMMANDS_FILE = "commands.json"  # optional {file name: {"command": ..., "note": ...}} for older results


@dataclass
class Source:
    """One results file."""

    path: Path
    kind: str  # pytest-benchmark | scaling | hardware | refit | step_breakdown | learning_efficiency | prm_sweep
    # | unknown
    data: Any
    command: str | None = None
    command_note: str = ""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Row:
    """One (kernel, case, provider) measurement."""

    source: str
    kernel: str
    case: str
    provider: str | None
    seconds: float
    stat: str
    peak_bytes: int | None = None
    bytes_moved: float | None = None
    flops: float | None = None
    dtype: str | None = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.provider in OURS


def detect_kind(path: Path, data: Any) -> str:
    if isinstance(data, dict):
        if isinstance(data.get("benchmarks"), list):
            return "pytest-benchmark"
        kind = data.get("kind")
        if kind in ("scaling", "hardware", "refit", "step_breakdown", "learning_efficiency", "prm_sweep",
                    "prm_offline"):
            return kind
        if "modes" in data:
            return "step_breakdown"
        if "curves" in data:
            return "learning_efficiency"
    for prefix in ("step_breakdown", "learning_efficiency", "prm_sweep"):
        if path.name.startswith(prefix):
            return prefix
    return "unknown"


def load_sources(results: Path) -> tuple[list[Source], list[str]]:
    """(every parsable *.json under `results`, sorted by name; warnings for files that could not be read)."""
    commands = {}
    commands_path = results / COMMANDS_FILE
    if commands_path.exists():
        commands = json.loads(commands_path.read_text())
    sources, warnings = [], []
    for path in sorted(results.glob("*.json")):
        if path.name == COMMANDS_FILE:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            warnings.append(f"{path.name}: not readable JSON ({err})")
            continue
        source = Source(path, detect_kind(path, data), data)
        source.command, source.command_note = _command(source, commands.get(path.name))
        sources.append(source)
    return sources, warnings


def _command(source: Source, sidecar: dict | None) -> tuple[str | None, str]:
    data = source.data
    if isinstance(data, dict) and data.get("command"):
        return data["command"], ""
    if sidecar:
        return sidecar["command"], sidecar.get("note", f"from {COMMANDS_FILE}")
    if source.kind == "pytest-benchmark":
        modules = sorted({b.get("fullname", "").split("::")[0] for b in data["benchmarks"]} - {""})
        if modules:
            cmd = (f".venv/bin/pytest {' '.join(modules)} --benchmark-only "
                   f"--benchmark-json bench/results/{source.name}")
            return cmd, "reconstructed from the test ids: environment overrides (PRIMEFLOW_BENCH_*) not recorded"
    return None, "no command recorded"


def _int(text: str, key: str) -> int | None:
    match = re.search(rf"\b{key}=(\d+)", text)
    return int(match.group(1)) if match else None


def dims(case: str, info: dict[str, Any]) -> dict[str, int]:
    """N, H, V (and models) from extra_info, else from `KEY=value` in the case text."""
    out = {}
    for key in ("N", "H", "V"):
        value = info.get(key, _int(case, key))
        if value is not None:
            out[key] = int(value)
    return out


def row_dtype(case: str, info: dict[str, Any]) -> str | None:
    text = str(info.get("dtype", "")) + " " + case
    if "bfloat16" in text or "bf16" in text:
        return "bf16"
    if "float16" in text or "fp16" in text:
        return "fp16"
    if "float32" in text or "fp32" in text:
        return "fp32"
    return None


def is_backward(case: str) -> bool:
    return "backward" in case or "bwd" in case


def work(kernel: str, case: str, info: dict[str, Any], dtype: str | None) -> tuple[float | None, float | None]:
    """(bytes moved, flops) counted for a row, per the module docstring's formulas."""
    if "flops" in info or "bytes_moved" in info:
        return info.get("bytes_moved"), info.get("flops")
    d = dims(case, info)
    bwd = is_backward(case)
    if kernel == "linear_token_logprobs" and {"N", "H", "V"} <= d.keys():
        return None, (6 if bwd else 2) * d["N"] * d["H"] * d["V"]
    if kernel == "prime_token_rewards" and {"N", "H", "V"} <= d.keys():
        return None, 2 * d["N"] * d["H"] * d["V"] * int(info.get("models", 3))
    if kernel == "token_logprobs" and {"N", "V"} <= d.keys():
        elt = 2 if dtype in ("bf16", "fp16") else 4
        return (3 if bwd else 1) * d["N"] * d["V"] * elt, None
    if "bytes_read" in info:
        return float(info["bytes_read"]), None
    return None, None


def _provider(info: dict[str, Any], params: list[str]) -> str | None:
    if info.get("provider"):
        return str(info["provider"])
    for token in params:
        if token in KNOWN_PROVIDERS:
            return token
    return None


def _kernel(group: str | None, module: str, info: dict[str, Any]) -> str:
    if info.get("kernel"):
        return str(info["kernel"])
    if group:
        first = group.split()[0]
        if "_" in first and first.isidentifier():
            return first
    if module in MODULE_KERNELS:
        return MODULE_KERNELS[module]
    return module.removeprefix("bench_") or "unnamed"


def _case(group: str | None, kernel: str, test: str, params: list[str], provider: str | None,
          info: dict[str, Any]) -> str:
    if group:
        case = group[len(kernel):].strip() if group.startswith(kernel) else group
        return case or test
    rest = [p for p in params if p != provider]
    shape = " ".join(f"{k}={info[k]}" for k in ("N", "H", "V", "B", "T") if k in info)
    return " ".join([test.removeprefix("test_").replace("forward_backward", "forward+backward"), *rest, shape]
                    ).strip()


def pytest_rows(source: Source) -> list[Row]:
    """Rows of one pytest-benchmark file (see the module docstring)."""
    rows = []
    for bench in source.data["benchmarks"]:
        info = dict(bench.get("extra_info") or {})
        fullname = bench.get("fullname", bench.get("name", ""))
        module = Path(fullname.split("::")[0]).stem
        name = bench.get("name", fullname.split("::")[-1])
        test, _, param_text = name.partition("[")
        params = param_text.rstrip("]").split("-") if param_text else []
        group = bench.get("group")
        kernel = _kernel(group, module, info)
        device = str(info.get("device", "cpu"))
        paired = sorted(k[: -len("_wall_s")] for k in info if k.endswith("_wall_s"))
        if paired:
            case = _case(group, kernel, test, params, None, info)
            dtype = row_dtype(case, info)
            for provider in paired:
                b, f = work(kernel, case, info, dtype)
                rows.append(Row(source.name, kernel, case, provider, float(info[f"{provider}_wall_s"]),
                                "min wall, interleaved", None, b, f, dtype, device,
                                {"cpu_s": info.get(f"{provider}_cpu_s")}))
            continue
        provider = _provider(info, params)
        case = _case(group, kernel, test, params, provider, info)
        dtype = row_dtype(case, info)
        peak = info.get("peak_extra_bytes")
        peak = int(peak) if isinstance(peak, (int, float)) and peak >= 0 else None
        b, f = work(kernel, case, info, dtype)
        stats = bench.get("stats") or {}
        rows.append(Row(source.name, kernel, case, provider, float(stats.get("median", float("nan"))), "median",
                        peak, b, f, dtype, device, info))
    return rows


def machine(source: Source) -> dict[str, Any]:
    """Device, commit, date, threads, load and versions of a pytest-benchmark file, as far as recorded."""
    data = source.data
    env = data.get("primeflow_environment") or {}
    mi = data.get("machine_info") or {}
    cpu = (mi.get("cpu") or {}).get("brand_raw") or env.get("cpu")
    commit = data.get("commit_info") or {}
    return {
        "device": env.get("device_name") or cpu or "unknown",
        "cpu": cpu,
        "cores": (mi.get("cpu") or {}).get("count") or env.get("cores"),
        "commit": commit.get("id") or (env.get("commit") or {}).get("id"),
        "dirty": commit.get("dirty"),
        "date": data.get("datetime") or env.get("utc"),
        "libraries": env.get("libraries") or {},
        "uptime": env.get("uptime"),
    }
