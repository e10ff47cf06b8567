"""Third-party logs (library log records, warnings raised outside primeflow) go to run.dir/third_party.log, not
the console; primeflow's own warnings still show; `logging.third_party: console` leaves everything as it was;
restore() undoes the routing."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from child_env import fresh_world_env
from primeflow.trainer import third_party_logs
from primeflow.trainer.config import ConfigError, load_config

LIBRARY_FILE = "/opt/venv/lib/python3.11/site-packages/megatron/core/optimizer/__init__.py"


@pytest.fixture
def library_logger():
    """A library logger that prints through its own stream handler and does not propagate (vLLM and
    transformers configure theirs so)."""
    logger = logging.getLogger("primeflow_test_fakelib")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, handler
    logger.removeHandler(handler)
    logger.propagate = True


def test_library_logs_and_warnings_go_to_the_file_and_primeflows_stay(tmp_path, capsys, library_logger):
    lib, lib_handler = library_logger
    own = logging.getLogger("primeflow.trainer.test_own")
    path = tmp_path / third_party_logs.THIRD_PARTY_LOG
    root_level = logging.getLogger().level
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        previous_showwarning = warnings.showwarning
        try:
            third_party_logs.route("file", path, rank=0)
            lib.info("vllm-like INFO line")
            lib.warning("RotaryEmbedding: Failed to load weights")
            warnings.warn_explicit("Apex is not installed", UserWarning, LIBRARY_FILE, 24,
                                   module="megatron.core.optimizer")
            own.warning("own warning line")
            warnings.warn_explicit("own deprecation", UserWarning, third_party_logs.__file__, 1)
        finally:
            third_party_logs.restore()
        err = capsys.readouterr().err
        text = path.read_text()
        assert "vllm-like INFO line" in text and "RotaryEmbedding: Failed to load weights" in text
        assert "Apex is not installed" in text and "UserWarning" in text
        assert "vllm-like INFO line" not in err and "RotaryEmbedding" not in err and "Apex" not in err
        assert err.strip() == "own warning line"  # primeflow's log warnings still reach stderr
        assert [str(w.message) for w in shown] == ["own deprecation"]  # its warnings still shown, not filed
        assert "own deprecation" not in text
        # restored: the library prints through its own handler again, warnings and the root as before
        assert warnings.showwarning is previous_showwarning
    assert lib_handler in lib.handlers and lib.propagate is False
    assert logging.getLogger().level == root_level
    lib.info("after the run")
    assert "after the run" in capsys.readouterr().err
    assert "after the run" not in path.read_text()


def test_console_mode_routes_nothing(tmp_path, capsys, library_logger):
    lib, lib_handler = library_logger
    path = tmp_path / third_party_logs.THIRD_PARTY_LOG
    try:
        third_party_logs.route("console", path, rank=0)
        lib.info("shown on the console")
    finally:
        third_party_logs.restore()
    assert "shown on the console" in capsys.readouterr().err
    assert not path.exists() and lib_handler in lib.handlers


def test_bad_mode_names_the_key_and_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"logging\.third_party: 'loud' is not allowed; allowed values: "
                                          r"\['file', 'console'\]"):
        load_config(None, ["logging.third_party=loud"])
    assert load_config(None, []).logging.third_party == "file"
    with pytest.raises(ValueError, match=r"logging\.third_party='loud'.*\['file', 'console'\]"):
        third_party_logs.route("loud", tmp_path / "x.log")


_REAL_LIBRARIES = """
import sys, warnings
from pathlib import Path
from primeflow.trainer import third_party_logs
third_party_logs.route("file", Path(sys.argv[1]), rank=0)
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.models.qwen2").warning("transformers line")
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging_if_needed, init_logger
configure_logging_if_needed(LoggingConfig())  # what vllm.LLM() does when the engine is built
init_logger("vllm.model_executor.model_loader.reload.layerwise").warning("RotaryEmbedding: Failed to load weights")
init_logger("vllm.v1.engine.core").info("Initializing a V1 LLM engine")
print("own line", flush=True)
"""


def test_vllm_and_transformers_loggers_go_to_the_file(tmp_path):
    """The real libraries, configured after the routing started, as in a run: vLLM configures its loggers when an
    engine is built (unless VLLM_CONFIGURE_LOGGING=0), transformers adds its default handler at first use."""
    env = fresh_world_env(drop=("VLLM_CONFIGURE_LOGGING",))
    path = tmp_path / "third_party.log"
    done = subprocess.run([sys.executable, "-c", _REAL_LIBRARIES, str(path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert done.stdout.strip() == "own line", console
    for line in ("transformers line", "RotaryEmbedding: Failed to load weights", "Initializing a V1 LLM engine"):
        assert line in Path(path).read_text() and line not in console, (line, console)
