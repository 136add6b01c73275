"""Naming of the side files a proxy process writes next to the store (``<data>.health.json``, ``<data>.usage.json``)
when several proxy worker processes serve the same store (``aigw up --workers N``, docs/scaling.md).

A single process writes ``<data>.<kind>.json``; worker ``<id>`` writes ``<data>.<kind>.<id>.json``, so no two
processes ever replace each other's file. Readers (the admin API) list every file of a kind with
:func:`side_files` and merge them (store/health_file.py, store/usage.py). The one place the names are made.
"""

from __future__ import annotations

import os
import re

#: A worker id: short, and safe inside a file name and a glob (no dot, no slash).
WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JSON = ".json"


def check_worker_id(worker: str) -> str:
    """``worker`` stripped, or ValueError when it is not 1-64 letters, digits, ``_`` or ``-``."""
    value = worker.strip()
    if not WORKER_ID.fullmatch(value):
        raise ValueError(f"a worker id is 1-64 letters, digits, '_' or '-' (got {worker!r})")
    return value


def side_path(base: str | os.PathLike[str], worker: str | None) -> str:
    """The file of ``worker`` for the single-process file ``base`` (``x.health.json`` -> ``x.health.<id>.json``);
    ``base`` itself when ``worker`` is None or empty."""
    base = os.fspath(base)
    if not worker:
        return base
    if not base.endswith(_JSON):
        raise ValueError(f"a side file name ends in {_JSON}: {base!r}")
    return f"{base[:-len(_JSON)]}.{check_worker_id(worker)}{_JSON}"


def side_files(base: str | os.PathLike[str]) -> dict[str | None, str]:
    """Every existing file of the kind of ``base``: ``None`` -> ``base`` (when it exists) and worker id -> path,
    in worker id order. Temporary files of atomic writes (dot-prefixed) and anything else are not listed."""
    base = os.fspath(base)
    found: dict[str | None, str] = {}
    if os.path.isfile(base):
        found[None] = base
    directory, name = os.path.split(os.path.abspath(base))
    stem = name[:-len(_JSON)] + "." if name.endswith(_JSON) else None
    if stem is None:
        return found
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return found
    for entry in names:
        if entry.startswith(stem) and entry.endswith(_JSON):
            worker = entry[len(stem):-len(_JSON)]
            if WORKER_ID.fullmatch(worker):
                found[worker] = os.path.join(os.path.dirname(base), entry)
    return found
