"""Installation contract: namespaced packages, the CLI entry points, and the C++ extension policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Makes `import primeflow._C` fail in a child interpreter, as if the extension had not been built.
HIDE_EXTENSION = """
import importlib.abc, sys
class HideExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "primeflow._C":
            raise ImportError("hidden by the test: simulating a missing build")
sys.meta_path.insert(0, HideExtension())
"""


def run_python(code: str, *, env_extra: dict[str, str] | None = None, cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("PRIMEFLOW_NO_EXT", "TRITON_INTERPRET")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=300)


def test_code_folders_install_only_under_the_primeflow_namespace():
    import primeflow.kernels
    import primeflow.models
    import primeflow.trainer

    for module, folder in ((primeflow.kernels, "kernels"), (primeflow.models, "models"),
                           (primeflow.trainer, "trainer")):
        assert Path(module.__file__).parent == REPO / folder
    # From the repo root, bare `kernels` must not resolve to our folder (HF's `kernels` is a different package).
    probe = run_python("import importlib.util as u; s = u.find_spec('kernels'); "
                       "print(s.origin if s else None)", cwd=Path("/"))
    assert str(REPO / "kernels") not in probe.stdout


def test_missing_extension_is_an_error_unless_opted_out():
    code = HIDE_EXTENSION + "import primeflow.kernels"
    missing = run_python(code)
    assert missing.returncode != 0
    assert "primeflow._C" in missing.stderr and "PRIMEFLOW_NO_EXT=1" in missing.stderr

    opted_out = run_python(code + "\nimport torch\nx = torch.randn(3, 5)\n"
                                  "print(primeflow.kernels.token_logprobs_backend(x).value)\n"
                                  "print(primeflow.kernels.token_logprobs(x, torch.tensor([0, 4, 2])).shape)",
                           env_extra={"PRIMEFLOW_NO_EXT": "1"})
    assert opted_out.returncode == 0, opted_out.stderr
    assert opted_out.stdout.split() == ["reference", "torch.Size([3])"]
    warnings = [line for line in opted_out.stderr.splitlines() if "primeflow._C" in line]
    assert len(warnings) == 1 and warnings[0].startswith("primeflow: warning:")


@pytest.mark.parametrize("entry", [["primeflow"], [sys.executable, "-m", "primeflow"]], ids=["script", "module"])
def test_cli_entry_points(entry):
    if entry == ["primeflow"]:
        entry = [str(Path(sys.executable).parent / "primeflow")]
    shown = subprocess.run([*entry, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "train" in shown.stdout and "eval" in shown.stdout
    unknown = subprocess.run([*entry, "trian"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "invalid choice: 'trian'" in unknown.stderr and "'train'" in unknown.stderr
