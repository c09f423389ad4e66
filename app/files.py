"""Files the app hands to users (JSON, PNG/SVG figures): one fresh folder per file in a
temp directory, cleared of entries older than ``max_age_s``."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path


class OutputDir:
    def __init__(self, root: str | Path | None = None, max_age_s: float = 3600.0) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="dfine-app-outputs-"))
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

    def _prune(self) -> None:
        now = time.time()
        with self._lock:
            if now - self._last_prune < 60:
                return
            self._last_prune = now
        for folder in self.root.iterdir():
            try:
                if now - folder.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue


def safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "file"
    return stem[:100]
