"""Lets the verifier pool's workers start without re-running the caller's main script.

multiprocessing's forkserver children re-import the parent's main module (as ``__mp_main__``) before they run
their target, so that functions defined there can be unpickled. A script without an
``if __name__ == "__main__":`` guard then calls ``math_score`` again inside every worker, and each worker dies
with multiprocessing's "bootstrapping phase" error. Our workers only run a function of an importable module
(``HardTimeoutPool.func_path``), never anything from ``__main__``, so that re-import buys nothing.

How: the pool writes the caller's main (what multiprocessing would re-import) to an environment variable
before the forkserver starts; the forkserver imports this module first (its preload list), and this module
gives the forkserver's own ``__main__`` that identity. Workers forked from it then find "main already
loaded" and skip the re-import. Nothing here runs unless that variable is set and this process's ``__main__``
is a bare ``-c`` program (which the forkserver's is), so importing it anywhere else changes nothing.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import types

ENV_VAR = "PRIMEFLOW_VERIFIER_PARENT_MAIN"


def describe_main(preparation: dict[str, object]) -> str:
    """The environment value for the caller's main, from multiprocessing's own preparation data (so it matches
    exactly what a child would compare against)."""
    keys = ("init_main_from_name", "init_main_from_path")
    return json.dumps({k: preparation[k] for k in keys if k in preparation})


def _stand_in_for_parent_main() -> None:
    raw = os.environ.get(ENV_VAR)
    current = sys.modules.get("__main__")
    if not raw or current is None or getattr(current, "__file__", None) or getattr(current, "__spec__", None):
        return  # not the forkserver (or nothing to stand in for)
    parent = json.loads(raw)
    stand_in = types.ModuleType("__main__")
    if "init_main_from_name" in parent:  # `python -m pkg.mod`: children compare __spec__.name
        stand_in.__spec__ = importlib.machinery.ModuleSpec(parent["init_main_from_name"], None)
    if "init_main_from_path" in parent:  # `python script.py`: children compare __file__
        stand_in.__file__ = parent["init_main_from_path"]
    sys.modules["__main__"] = stand_in


_stand_in_for_parent_main()
