"""Atomic file replacement shared by the store and the health file.

Readers open the path by name, so replacing it with ``os.replace`` means a reader sees either the old or the new
file, never a half-written one; the temporary file lives in the same directory because a rename is only atomic
within one filesystem.
"""

from __future__ import annotations

import os
import tempfile


def temp_prefix(path: str) -> str:
    """Name prefix of the temporary files written for ``path`` (lets the store find orphans of killed writers)."""
    return "." + os.path.basename(path) + ".tmp-"


def atomic_write_bytes(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    ``durable`` also fsyncs the file and its directory, so the new content survives a power cut; the store wants
    that, an ephemeral status file published every second does not.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            if durable:
                os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(dir_fd)
