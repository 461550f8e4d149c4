"""Result files: one small JSON per table cell or figure input, with full provenance.

Every result records what produced it (kind, config, seed, profile), the data it saw, the
package versions and the git commit. Files are written atomically and reused when present;
missing ones are computed only when the caller allows it (``allow_train``), otherwise
:func:`get_or_compute` names the missing file. Every cached file carries a *fingerprint* of what
made it (:func:`fingerprint`: the resolved config, the data request, the corruption seed and
suite); a file whose fingerprint differs from the request is never reused (:func:`cache_holds`). Tables are rendered from these files (CSV,
Markdown, LaTeX), side by side with the paper's reported numbers in ``results/paper/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ._common import DemHECError, atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "PAPER_DIR",
    "cache_holds",
    "check_writable",
    "compare_with_paper",
    "fingerprint",
    "get_or_compute",
    "git_commit",
    "paper_table",
    "read_result",
    "save_table",
    "versions",
    "without_unchanged",
    "write_result",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO_ROOT / "results" / "paper"
SCHEMA = 1
_PACKAGES = ("torch", "torchvision", "numpy", "imagecorruptions-imaug", "timm", "scikit-learn",
             "pandas")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the numbers."""
    out = {"python": platform.python_version()}
    for name in ("demhec", *_PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    """The commit of the checkout this library runs from, with ``-dirty`` for local edits; a
    launcher that knows better names it in ``DEMHEC_GIT_COMMIT`` (a GPU machine's copy of the work
    tree can carry a ``.git`` of an older commit than the files it runs)."""
    if os.environ.get("DEMHEC_GIT_COMMIT"):
        return os.environ["DEMHEC_GIT_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return _jsonable(obj.to_dict("records"))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def write_result(
    path: str | os.PathLike,
    *,
    kind: str,
    profile: str,
    config: Any,
    metrics: Any,
    data: Mapping[str, Any],
    seed: int,
    fingerprint: Mapping[str, Any] | None = None,
    split: str | None = None,
) -> dict:
    """Write one result JSON atomically and return its content (with ``fingerprint``, see
    :func:`fingerprint`, when it is a cache that must be checked before reuse, and ``split``,
    the half of the evaluation images it was scored on, when it was scored on one)."""
    record = {
        "schema": SCHEMA,
        "kind": kind,
        "profile": profile,
        "seed": seed,
        **({"split": split} if split is not None else {}),
        "config": _jsonable(config),
        "data": _jsonable(data),
        "metrics": _jsonable(metrics),
        **({"fingerprint": dict(fingerprint)} if fingerprint is not None else {}),
        "versions": versions(),
        "git_commit": git_commit(),
    }
    text = json.dumps(record, indent=1, sort_keys=False, allow_nan=False) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)
    return record


def read_result(path: str | os.PathLike) -> dict:
    """Load a result JSON, refusing files that are not complete demhec results."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DemHECError(f"result {path} is unreadable ({type(e).__name__}); delete it to recompute") from e
    missing = {"schema", "kind", "profile", "config", "metrics", "data", "versions",
               "git_commit"} - set(record)
    if missing:
        raise DemHECError(f"result {path} lacks {sorted(missing)}; delete it to recompute")
    return record


def fingerprint(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What made a cached file, flattened to ``{"model.config.alpha": 0.5, ...}``: nested mappings
    (and dataclasses such as the configs) become dotted keys, so a mismatch names the field.
    Values go through JSON, as they are stored, so a fresh fingerprint compares equal to a
    recorded one (tuples become lists)."""
    flat: dict[str, Any] = {}
    spec = without_unchanged(spec)

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", json.loads(json.dumps(_jsonable(spec))))
    return flat


def without_unchanged(obj: Any) -> Any:
    """``obj`` with every dataclass field marked ``metadata={"fingerprint": "if_changed"}`` left out
    where it holds its default (fields added after caches were made at that default)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: without_unchanged(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("fingerprint") == "if_changed" and f.default is not dataclasses.MISSING
                        and getattr(obj, f.name) == f.default)}
    if isinstance(obj, Mapping):
        return {k: without_unchanged(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [without_unchanged(v) for v in obj]
    return obj


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k, "<absent>") != wanted.get(k, "<absent>"))
    shown = [f"{k} (recorded {recorded.get(k, '<absent>')!r}, requested {wanted.get(k, '<absent>')!r})"
             for k in keys[:6]]
    return "; ".join(shown) + (f"; and {len(keys) - 6} more" if len(keys) > 6 else "")


def cache_holds(path: str | os.PathLike, recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any],
                *, allow_train: bool, what: str = "") -> bool:
    """Whether the cache at ``path``, made with fingerprint ``recorded`` (None: it has none),
    holds what ``wanted`` asks for. On a mismatch, False when it may be recomputed
    (``allow_train``); otherwise the error names every field that differs."""
    path = Path(path)
    if recorded is not None and dict(recorded) == dict(wanted):
        return True
    reason = ("has no fingerprint of what made it" if recorded is None
              else f"was made with other settings: {_differences(recorded, wanted)}")
    if not allow_train:
        raise DemHECError(f"{path.name} ({what or path.stem}) under {path.parent} {reason}; "
                          "set allow_train=True (notebooks: -p allow_train True) to recompute it")
    log.warning("%s %s; recomputing it", path, reason)
    return False


def get_or_compute(
    path: str | os.PathLike,
    compute: Callable[[], dict],
    *,
    fingerprint: Mapping[str, Any],
    allow_train: bool,
    recompute: bool = False,
    what: str = "",
) -> dict:
    """Return the result at ``path`` when it was made with ``fingerprint`` (see
    :func:`fingerprint`); otherwise compute and write it (``compute`` returns the
    :func:`write_result` keyword arguments) when ``allow_train`` permits, else say why not."""
    path = Path(path)
    if path.exists() and not recompute:
        record = read_result(path)
        if cache_holds(path, record.get("fingerprint"), fingerprint, allow_train=allow_train, what=what):
            return record
    elif not allow_train:
        reason = "is missing" if not path.exists() else "is to be recomputed"
        raise DemHECError(
            f"result {path.name} ({what or path.stem}) {reason} under {path.parent}; "
            "set allow_train=True (notebooks: -p allow_train True) to compute it"
        )
    return write_result(path, **compute(), fingerprint=fingerprint)


def check_writable(directory: str | os.PathLike) -> Path:
    """Fail early, before any long work, when results cannot be written to ``directory``."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A probe of its own: torchrun's ranks check the same folder at the same moment.
        with tempfile.NamedTemporaryFile("w", dir=directory, prefix=".write-test.") as f:
            f.write("ok")
            f.flush()
    except OSError as e:
        raise DemHECError(f"cannot write results to {directory}: {e.strerror or e}") from e
    return directory


def paper_table(name: str, paper_dir: str | os.PathLike = PAPER_DIR) -> pd.DataFrame:
    """The paper's reported numbers, transcribed once into ``results/paper/<name>.csv``."""
    path = Path(paper_dir) / f"{name}.csv"
    if not path.exists():
        valid = sorted(p.stem for p in Path(paper_dir).glob("*.csv"))
        raise DemHECError(f"unknown paper table {name!r}; valid: {', '.join(valid)}")
    return pd.read_csv(path)


def compare_with_paper(
    ours: pd.DataFrame,
    paper: pd.DataFrame,
    on: list[str],
    value: str = "accuracy",
) -> pd.DataFrame:
    """Join our numbers with the paper's on the key columns ``on``; add ``delta`` = ours -
    paper (in points). Rows the paper does not report keep NaN there."""
    left = ours[[*on, value]].rename(columns={value: "ours"})
    right = paper[[*on, value]].rename(columns={value: "paper"})
    out = left.merge(right, on=on, how="left")
    out["delta"] = out["ours"] - out["paper"]
    return out


def save_table(df: pd.DataFrame, stem: str, tables_dir: str | os.PathLike,
               *, float_format: str = "%.2f") -> list[Path]:
    """Write ``df`` as ``<stem>.csv``, ``.md`` and ``.tex`` under ``tables_dir``."""
    tables_dir = Path(tables_dir)
    paths = [tables_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    with atomic_write(paths[0], "w") as f:
        f.write(df.to_csv(index=False, float_format=float_format))
    with atomic_write(paths[1], "w") as f:
        f.write(markdown_table(df, float_format) + "\n")
    with atomic_write(paths[2], "w") as f:
        f.write(df.to_latex(index=False, float_format=float_format, na_rep="--"))
    return paths


def markdown_table(df: pd.DataFrame, float_format: str = "%.2f") -> str:
    """A pipe table without the optional ``tabulate`` dependency."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "--" if v != v else float_format % v
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])
