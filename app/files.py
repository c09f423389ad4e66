"""Files the app writes, and how long they live.

* :meth:`OutputDir.path`: a file handed to the user once (a JSON download, a figure, a frame
  shown in an image component — Gradio copies what it shows into its own cache): one fresh
  folder per file, removed once older than ``max_age_s``.
* :meth:`OutputDir.run`: the folder of a run that later events read again (a video's frames
  for the slider and the track view): never removed by age, only by :meth:`OutputDir.release`
  — which the owner calls when the session that shows it ends (a ``gr.State``'s
  ``delete_callback``) — or when the server stops.
* :func:`temp_folder`: a temporary folder removed when the process exits (``atexit``); the
  output root and the model uploads are such folders. :meth:`OutputDir.close` removes the
  output root at once (server stop).
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

RUNS = "runs"
"""The sub-folder of run folders, which age never prunes."""


def temp_folder(prefix: str) -> Path:
    """A new temporary folder, removed (with everything in it) when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class OutputDir:
    """The app's output folder (default: a :func:`temp_folder`).

    Args:
        root: where to write; a given folder is the caller's (removed only by :meth:`close`).
        max_age_s: how long a file from :meth:`path` stays.
    """

    def __init__(self, root: str | Path | None = None, max_age_s: float = 3600.0) -> None:
        self.root = Path(root) if root else temp_folder("dfine-app-outputs-")
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._last_prune = 0.0

    def path(self, name: str) -> Path:
        """A new, unique path ending in ``name`` (made safe for file systems)."""
        self._prune()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder / safe_name(name)

    def run(self, prefix: str) -> tuple[str, Path]:
        """``(run_id, folder)``: a new folder for one run, kept until :meth:`release`."""
        run_id = uuid.uuid4().hex[:12]
        folder = self.root / RUNS / f"{safe_name(prefix)}-{run_id}"
        folder.mkdir(parents=True)
        return run_id, folder

    def release(self, folder: str | Path) -> None:
        """Remove a run folder from :meth:`run` (its session ended, or the run failed)."""
        folder = Path(folder)
        if folder.parent != self.root / RUNS:
            raise ValueError(f"{folder} is not a run folder of {self.root}")
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Remove everything (the server stops)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def _prune(self) -> None:
        now = time.time()
        with self._lock:
            if now - self._last_prune < 60:
                return
            self._last_prune = now
        for folder in self.root.iterdir():
            if folder.name == RUNS:
                continue
            try:
                if now - folder.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue


def safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "file"
    return stem[:100]
