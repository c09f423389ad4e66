"""The state every tab shares: one model store, one result cache, the annotated examples and
the folder for files handed to users — plus :meth:`AppState.select`, the step every image
endpoint starts with (check the Detect tab's inputs, run or reuse the forward pass, apply the
threshold). No gradio components here: tabs are built from it (see :mod:`app.ui`), and tests
call the tabs' handler functions with it directly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np

from app import gpu
from app.checks import check_image, check_max_detections, check_size, check_threshold
from app.errors import UserError
from app.files import OutputDir
from app.ground_truth import AnnotatedExamples
from app.models import DEFAULT_KEY, LoadedModel, ModelEntry, ModelStore
from app.results import CacheKey, ResultCache, TraceResult, file_digest
from dfine.detections import Detections
from dfine.io import ImageLoadError

T = TypeVar("T")


@dataclass(frozen=True)
class SharedInputs:
    """The values of the shared controls: the Detect tab's inputs that every image endpoint
    takes first, in this order (``/detect``, ``/trace``, ``/distributions``, …). The one list
    of them: :meth:`app.tabs.common.Controls.shared` and the endpoints' parameters are derived
    from these fields, so a new shared control is a field here (with a default), a
    component in the Detect tab and its use in :meth:`AppState.select`."""

    image: str | None
    threshold: float
    size: int | str
    model: str | None
    max_detections: int
    letterbox: bool = False
    """Keep the aspect ratio (grey padding) instead of the reference's stretch resize."""


@dataclass(frozen=True)
class Selection:
    """The result of one forward pass and the detections the Detect tab's settings keep."""

    result: TraceResult
    model: LoadedModel
    detections: Detections
    queries: np.ndarray
    threshold: float
    max_detections: int
    digest: str
    cached: bool
    inputs: SharedInputs

    def require_detections(self) -> None:
        if len(self.detections) == 0:
            raise UserError(
                f"No detections above the threshold {self.threshold:g} to analyse; lower the "
                "threshold in the Detect tab."
            )

    def check_detection(self, index: int) -> int:
        """``index`` if it numbers one of the detections, else a ``UserError`` saying which do."""
        n = len(self.detections)
        if not 0 <= index < n:
            raise UserError(
                f"There is no detection {index}: {n} detection{'s' if n != 1 else ''} are above "
                f"the threshold {self.threshold:g} (numbered 0 to {n - 1}). Press Detect to "
                "refresh the list."
            )
        return index


class Memo:
    """A small thread-safe LRU for what one tab derives from a selection (GO-LSD reports)."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return value


@dataclass
class AppState:
    """What every tab shares (one per app; thread-safe)."""

    store: ModelStore = field(default_factory=ModelStore)
    cache: ResultCache = field(default_factory=ResultCache)
    examples: AnnotatedExamples = field(default_factory=AnnotatedExamples)
    outputs: OutputDir = field(default_factory=OutputDir)
    _memos: dict[str, Memo] = field(default_factory=dict, repr=False)

    def memo(self, name: str) -> Memo:
        """The tab-private LRU ``name`` (created on first use)."""
        return self._memos.setdefault(name, Memo())

    def select(self, inputs: SharedInputs, progress: gr.Progress | None = None) -> Selection:
        """Check the shared inputs, run (or reuse) the forward pass, apply the threshold."""
        path = check_image(inputs.image)
        threshold = check_threshold(inputs.threshold)
        max_detections = check_max_detections(inputs.max_detections)
        key, entry = self._cache_key(path, inputs)
        digest, _, size, letterbox, budget = key

        def compute() -> TraceResult:
            if progress is not None and not self.store.is_loaded(entry.key):
                progress(0.05, desc=f"Loading {entry.label}")
            loaded = self.store.get(entry.key)
            if progress is not None:
                progress(0.4, desc="Running D-FINE on the image")
            try:
                dets, trace, queries = gpu.trace(loaded.detector(size, letterbox, budget), path)
            except ImageLoadError as e:  # name the file, not the server's folder
                raise ImageLoadError(str(e).replace(path, Path(path).name)) from None
            return TraceResult(dets, trace, queries.cpu().numpy(), entry.key, size, letterbox)

        result, cached = self.cache.get(key, compute)
        loaded = self.store.get(entry.key)
        dets, queries = result.select(threshold, max_detections)
        return Selection(
            result, loaded, dets, queries, threshold, max_detections, digest, cached, inputs
        )

    def cached(self, inputs: SharedInputs) -> Selection | None:
        """:meth:`select` if the forward pass for these inputs is cached already, else
        ``None`` (what live controls use: they re-filter, never run the model)."""
        if inputs.image is None or not str(inputs.image).strip():
            return None
        try:
            key, _ = self._cache_key(inputs.image, inputs)
        except UserError:
            return None
        if self.cache.peek(key) is None:
            return None
        return self.select(inputs)

    def _cache_key(self, path: str | Path, inputs: SharedInputs) -> tuple[CacheKey, ModelEntry]:
        """The forward pass ``inputs`` need — image file digest, model key, checked input
        size, letterbox, the model's decoder budget — and the model's entry (a
        :class:`UserError` for a bad size or model)."""
        size = check_size(inputs.size)
        entry = self.store.entry(inputs.model)
        budget = self.store.budget(entry.key)
        return (file_digest(path), entry.key, size, bool(inputs.letterbox), budget), entry

    def warm(self, images: Sequence[str | Path]) -> int:
        """Run the default model once on ``images`` (the bundled examples) at its default input
        size, so that a first click on an example is answered from the cache. Returns how many
        were computed (the others were cached already)."""
        default = self.store.get(None)
        computed = 0
        for image in images:
            sel = self.select(SharedInputs(str(image), 0.5, default.default_size, DEFAULT_KEY, 1))
            computed += not sel.cached
        return computed
