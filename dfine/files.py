"""File utilities shared by every writer and reader of files.

``file_sha256`` is the one file hash of the project (downloads, upload and cache keys);
``atomic_write`` the one way it writes files that others may read while they are written
(checkpoints, exports, engine caches, training logs, reports).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FILE_MODE", "TMP_SUFFIX", "atomic_write", "file_sha256"]

TMP_SUFFIX = ".tmp"


def _default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _default_file_mode()
"""Every file :func:`atomic_write` writes gets this mode, whatever library wrote it
(safetensors creates its files 0o600, ``torch.save`` 0o644 under the usual umask)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``.

    The temporary file (``<name>.tmp.<pid>`` next to ``path``) is removed if ``write`` fails.
    The result has mode :data:`FILE_MODE`, the same for every file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_SUFFIX}.{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks. OSErrors propagate."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
