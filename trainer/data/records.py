"""Prompt records and the prompt-file loaders (JSONL and parquet).

Two row schemas are accepted, detected per row:

- Eurus-2-RL-Data (prime_spec.md 9.2; the verl/PRIME parquet layout)::

      {"data_source": str, "prompt": [{"role": "system"|"user"|"assistant", "content": str}, ...],
       "ability": "math"|"code", "reward_model": {"ground_truth": str, "style": str}, ...}

  The messages are used as they are (Eurus rows already carry PRIME's system prompt and suffix).
  For ``ability == "code"`` the ground truth is the APPS-style tests as a JSON string
  ``{"inputs": [...], "outputs": [...], "fn_name"?: str}``; it is parsed here once so that a broken row
  fails at load time with its file and line, not inside the verifier in the middle of a step.

- simple JSONL: ``{"problem": str, "answer": str|int|float}`` (math), or ``{"problem": str, "tests":
  {...}}`` (code, the layout of ../shared/data/code), each with an optional ``"id"`` and ``"source"``.
  The problem becomes a single user message with no suffix (``apply_prime_suffix`` adds one).

A malformed row raises ``ValueError("<file>:<line>: <what is wrong>")`` (line numbers are 1-based; for
parquet, "row <n>", also 1-based), or with ``on_error="skip"`` is left out and reported in
``LoadedPrompts.skipped``. Either way the training loop never meets a bad row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ABILITIES = ("math", "code")
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class PromptRecord:
    """One RL prompt.

    uid: unique within a dataset (the row's ``id``/``uid`` if it has one, else ``"<file name>:<line>"``);
        the loader's state and the refill buffer refer to prompts by it.
    messages: chat messages ``[{"role": ..., "content": ...}]`` ending with a user turn (no assistant
        prefix); rendered with the tokenizer's chat template and ``add_generation_prompt=True``.
    ability: "math" or "code"; selects the verifier.
    ground_truth: the math answer string, or the code tests as a JSON string (what the verifier takes).
    data_source: where the prompt comes from (per-source metrics).
    """

    uid: str
    messages: list[dict]
    ability: str
    ground_truth: str
    data_source: str

    def __hash__(self) -> int:  # by uid: the messages list is not hashable, and uids are unique per dataset
        return hash(self.uid)


@dataclass
class LoadedPrompts:
    """What ``load_prompts`` returns: the good records, and every skipped row as (file, line, reason)."""

    records: list[PromptRecord]
    skipped: list[tuple[str, int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


class _RowError(ValueError):
    """A row-level problem; the loader prefixes the file and line."""


def _need(row: dict, key: str, types: type | tuple[type, ...], what: str) -> Any:
    if key not in row:
        raise _RowError(f"missing field {key!r} ({what}); the row has keys {sorted(row)}")
    value = row[key]
    if not isinstance(value, types) or isinstance(value, bool):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise _RowError(f"field {key!r} must be {names}, got {type(value).__name__} ({_short(value)})")
    return value


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_messages(prompt: Any) -> list[dict]:
    if not isinstance(prompt, list) or not prompt:
        raise _RowError(f"field 'prompt' must be a non-empty list of chat messages, got {_short(prompt)}")
    messages = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict):
            raise _RowError(f"prompt[{i}] must be an object {{role, content}}, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise _RowError(f"prompt[{i}].role must be one of {list(ROLES)}, got {_short(role)}")
        if not isinstance(content, str):
            raise _RowError(f"prompt[{i}].content must be a str, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise _RowError(f"prompt[{i}] is a system message; only the first message may be one")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise _RowError(f"the last prompt message must be the user's, got role {messages[-1]['role']!r}")
    return messages


def check_code_tests(tests: Any) -> str:
    """Validate APPS-style tests (dict or JSON string) and return them as a JSON string."""
    if isinstance(tests, str):
        try:
            parsed = json.loads(tests)
        except ValueError as e:
            raise _RowError(f"code ground_truth is not valid JSON ({e})") from None
    else:
        parsed = tests
    if not isinstance(parsed, dict) or not isinstance(parsed.get("inputs"), list) \
            or not isinstance(parsed.get("outputs"), list):
        raise _RowError('code tests must be an object {"inputs": [...], "outputs": [...]} (optionally "fn_name")')
    n_in, n_out = len(parsed["inputs"]), len(parsed["outputs"])
    if n_in != n_out or n_in == 0:
        raise _RowError(f"code tests need as many outputs as inputs, at least one; got {n_in} inputs, {n_out} outputs")
    if "fn_name" in parsed and parsed["fn_name"] is not None and not isinstance(parsed["fn_name"], str):
        raise _RowError(f"code tests 'fn_name' must be a str, got {type(parsed['fn_name']).__name__}")
    return tests if isinstance(tests, str) else json.dumps(tests)


def _row_uid(row: dict, default: str) -> str:
    for key in ("uid", "id"):
        if key in row and row[key] is not None:
            value = row[key]
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise _RowError(f"field {key!r} must be a str or int, got {type(value).__name__}")
            return str(value)
    return default


def _eurus_record(row: dict, default_uid: str) -> PromptRecord:
    data_source = _need(row, "data_source", str, "where the prompt comes from")
    messages = _check_messages(row["prompt"])
    ability = _need(row, "ability", str, "math or code")
    if ability not in ABILITIES:
        raise _RowError(f"field 'ability' must be one of {list(ABILITIES)}, got {ability!r}")
    reward_model = _need(row, "reward_model", dict, "{ground_truth, style}")
    if "ground_truth" not in reward_model:
        raise _RowError(f"missing field 'reward_model.ground_truth'; reward_model has keys {sorted(reward_model)}")
    gt = reward_model["ground_truth"]
    if not isinstance(gt, str):
        raise _RowError(f"field 'reward_model.ground_truth' must be a str, got {type(gt).__name__} ({_short(gt)})")
    if ability == "math" and not gt.strip():
        raise _RowError("field 'reward_model.ground_truth' is empty")
    if ability == "code":
        gt = check_code_tests(gt)
    return PromptRecord(uid=_row_uid(row, default_uid), messages=messages, ability=ability, ground_truth=gt,
                        data_source=data_source)


def _simple_record(row: dict, default_uid: str, default_source: str) -> PromptRecord:
    problem = _need(row, "problem", str, "the question text")
    if not problem.strip():
        raise _RowError("field 'problem' is empty")
    has_answer, has_tests = "answer" in row, "tests" in row
    if has_answer == has_tests:
        raise _RowError("a simple row needs exactly one of 'answer' (math) or 'tests' (code); "
                        f"the row has keys {sorted(row)}")
    if has_answer:
        answer = _need(row, "answer", (str, int, float), "the reference answer")
        if isinstance(answer, float) and not math.isfinite(answer):
            raise _RowError(f"field 'answer' must be finite, got {answer!r}")
        gt, ability = str(answer), "math"
        if not gt.strip():
            raise _RowError("field 'answer' is empty")
    else:
        gt, ability = check_code_tests(row["tests"]), "code"
    source = row.get("source", default_source)
    if not isinstance(source, str):
        raise _RowError(f"field 'source' must be a str, got {type(source).__name__}")
    return PromptRecord(uid=_row_uid(row, default_uid), messages=[{"role": "user", "content": problem}],
                        ability=ability, ground_truth=gt, data_source=source)


def record_from_row(row: Any, *, default_uid: str, default_source: str) -> PromptRecord:
    """Build a PromptRecord from one decoded row of either schema (raises ValueError on a bad row)."""
    if not isinstance(row, dict):
        raise _RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if "prompt" in row:
        return _eurus_record(row, default_uid)
    if "problem" in row:
        return _simple_record(row, default_uid, default_source)
    raise _RowError("the row has neither 'prompt' (Eurus-2-RL-Data schema) nor 'problem' (simple schema); "
                    f"keys: {sorted(row)}")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, decoded row or None, error) for every non-blank line."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, f"not valid UTF-8 ({e})"
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text), None
            except ValueError as e:
                yield lineno, None, f"not valid JSON ({e})"


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row, None


def _expand(path: str | Path | Sequence[str | Path]) -> list[Path]:
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise ValueError("load_prompts: no files given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"load_prompts: {p} does not exist or is not a file")
        if p.suffix not in SUFFIXES:
            raise ValueError(f"load_prompts: {p} has suffix {p.suffix!r}; supported: {list(SUFFIXES)}")
    return paths


def load_prompts(path: str | Path | Sequence[str | Path], *,
                 on_error: Literal["raise", "skip"] = "raise") -> LoadedPrompts:
    """Load prompt records from one or more ``.jsonl`` / ``.parquet`` files (rows of either schema).

    on_error="raise": the first malformed row raises ``ValueError("<file>:<line>: <reason>")``.
    on_error="skip": malformed rows are left out and listed in ``skipped`` as (file, line, reason).
    Duplicate uids are malformed too (the loader's buffer and state refer to prompts by uid).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    records: list[PromptRecord] = []
    skipped: list[tuple[str, int, str]] = []
    seen: dict[str, str] = {}
    for p in _expand(path):
        is_parquet = p.suffix == ".parquet"
        rows = _parquet_rows(p) if is_parquet else _jsonl_rows(p)
        for line, row, error in rows:
            where = f"{p}: row {line}" if is_parquet else f"{p}:{line}"
            if error is None:
                try:
                    rec = record_from_row(row, default_uid=f"{p.name}:{line}", default_source=p.stem)
                    if rec.uid in seen:
                        raise _RowError(f"duplicate uid {rec.uid!r} (first seen at {seen[rec.uid]})")
                except _RowError as e:
                    error = str(e)
            if error is not None:
                if on_error == "raise":
                    raise ValueError(f"{where}: {error}")
                skipped.append((str(p), line, error))
                continue
            seen[rec.uid] = where
            records.append(rec)
    return LoadedPrompts(records=records, skipped=skipped)
