"""Loads the C++ CPU ops (`primeflow._C`, built by CMakeLists.txt during installation).

A missing extension is an installation error, unless the package was installed with PRIMEFLOW_NO_EXT=1:
then CPU ops fall back to the PyTorch references and one warning line says so.
"""

from __future__ import annotations

import os
import sys

NO_EXT_ENV = "PRIMEFLOW_NO_EXT"


def _load() -> bool:
    try:
        import primeflow._C  # noqa: F401  (registers torch.ops.primeflow.*)
    except ImportError as error:
        if os.environ.get(NO_EXT_ENV) == "1":
            print(f"primeflow: warning: primeflow._C is not built ({NO_EXT_ENV}=1); CPU ops run the PyTorch "
                  "reference", file=sys.stderr)
            return False
        raise ImportError(
            "primeflow._C (the C++ CPU ops) is missing or failed to load: reinstall with `make install` "
            f"(the build log shows why), or set {NO_EXT_ENV}=1 to run the PyTorch references instead"
        ) from error
    return True


HAS_EXTENSION: bool = _load()
