"""One forward pass per (image, model, input size, letterbox), shared by every tab and every user.

``Detector.trace`` returns the detections of every query and the whole decoder trace at once,
so the Detect tab's call already holds everything the analysis tabs show: they read it from
this small LRU cache instead of running the model again. Thresholds and detection counts are
applied afterwards (:meth:`TraceResult.select`), so moving the threshold recomputes nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.errors import UserError
from dfine.detections import Detections
from dfine.files import file_sha256
from dfine.nn.decoder import DecoderTrace

CacheKey = tuple[str, str, int, bool, tuple[int, int] | None]  # ... letterbox, decoder budget


@dataclass(frozen=True)
class TraceResult:
    """Everything one forward pass gave: detections of all queries (score > 0, descending,
    original image kept), the decoder trace and each detection's query index."""

    detections: Detections
    trace: DecoderTrace
    queries: np.ndarray
    model_key: str
    size: int
    letterbox: bool = False

    @property
    def image(self) -> np.ndarray:
        assert self.detections.image is not None
        return self.detections.image

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` of the original image."""
        return self.detections.image_size

    @property
    def nbytes(self) -> int:
        tensors = [getattr(self.trace, n) for n in vars(self.trace)]
        size = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        return size + self.image.nbytes + self.detections.boxes.nbytes * 3

    def select(self, threshold: float, max_detections: int) -> tuple[Detections, np.ndarray]:
        """The detections scoring at least ``threshold``, at most ``max_detections`` of them
        (highest scores first), and their queries."""
        keep = np.flatnonzero(self.detections.scores >= threshold)[:max_detections]
        return self.detections[keep], self.queries[keep]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the identity of an uploaded image."""
    try:
        return file_sha256(path)
    except FileNotFoundError as e:
        raise UserError("The image file is gone from the server; upload it again.") from e
    except IsADirectoryError as e:
        raise UserError("Expected an image file, got a folder.") from e


class ResultCache:
    """A thread-safe LRU of :class:`TraceResult` by ``(image sha256, model key, size,
    letterbox)``,
    bounded by entry count and memory; concurrent requests for one key compute it once."""

    def __init__(self, max_entries: int = 16, max_bytes: int = 768 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, TraceResult] = OrderedDict()
        self._pending: dict[CacheKey, threading.Lock] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def peek(self, key: CacheKey) -> TraceResult | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def get(self, key: CacheKey, compute: Callable[[], TraceResult]) -> tuple[TraceResult, bool]:
        """``(result, was_cached)``; ``compute`` runs at most once per key at a time."""
        hit = self.peek(key)
        if hit is not None:
            with self._lock:
                self.hits += 1
            return hit, True
        with self._lock:
            key_lock = self._pending.setdefault(key, threading.Lock())
        with key_lock:
            hit = self.peek(key)
            if hit is not None:
                with self._lock:
                    self.hits += 1
                return hit, True
            try:
                result = compute()
            except BaseException:
                with self._lock:
                    self._pending.pop(key, None)
                raise
            with self._lock:  # stored before the key stops being pending: no second compute
                self.misses += 1
                self._items[key] = result
                self._shrink()
                self._pending.pop(key, None)
            return result, False

    def _shrink(self) -> None:
        total = sum(r.nbytes for r in self._items.values())
        while len(self._items) > 1 and (
            len(self._items) > self.max_entries or total > self.max_bytes
        ):
            _, old = self._items.popitem(last=False)
            total -= old.nbytes
