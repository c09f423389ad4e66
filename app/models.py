"""A thread-safe store of detection models, shared by every user of the app.

Each model is loaded once (weights-only loading, see ``dfine.load_model``), deployed for speed
and kept while it is in use: the default model always, at most ``max_loaded`` others (zoo
checkpoints, uploads) by least recent use. Keys: ``"default"``, a zoo name
(``dfine_n_coco``), or ``"upload-<sha256 prefix>"`` for an uploaded checkpoint.
"""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dfine
from app import gpu
from app.errors import UserError
from app.files import temp_folder
from app.paths import (
    BUNDLED_WEIGHTS,
    DEFAULT_THRESHOLD,
    FIXTURE_THRESHOLD,
    FIXTURE_WEIGHTS,
    INPUT_SIZES,
)
from dfine import hub, zoo
from dfine.checkpoint import CheckpointError
from dfine.data.synth import SYNTH_CLASSES
from dfine.files import file_sha256
from dfine.loss.criterion import DFINECriterion
from dfine.model import decoder_budget
from dfine.sources import is_onnx, resolve

DEFAULT_KEY = "default"
UPLOAD_PREFIX = "upload-"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
ONNX_REFUSED = (
    "{name} is an exported ONNX graph: the app needs the PyTorch weights it was exported "
    "from (.pth or .safetensors), because its analysis tabs read every decoder layer; run the "
    ".onnx with `dfine predict IMAGE --weights {name}` or dfine.Detector instead"
)


@dataclass(frozen=True)
class ModelEntry:
    """A model the app can load: where from, and how to call it."""

    key: str
    label: str
    source: str  # a file path or a zoo name
    kind: str  # "default", "zoo", "upload" or "hub" (a Hugging Face Hub id)
    is_fixture: bool = False

    @property
    def default_threshold(self) -> float:
        return FIXTURE_THRESHOLD if self.is_fixture else DEFAULT_THRESHOLD


@dataclass
class LoadedModel:
    """A loaded, deployed model with its detectors (one per input size) and loss criterion."""

    entry: ModelEntry
    model: dfine.DFINE
    num_parameters: int
    file_bytes: int | None
    _detectors: dict[tuple, dfine.Detector] = field(default_factory=dict)
    _criterion: DFINECriterion | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self.model.class_names
        return tuple(names) if names else tuple(f"class {i}" for i in range(self.num_classes))

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's own input size ``(height, width)``."""
        return tuple(self.model.config.eval_size)

    @property
    def default_size(self) -> int:
        """The input size the app starts with for this model: its own, when the app offers it
        (square multiples of 32 in 256..800, :data:`app.paths.INPUT_SIZES`), else 640."""
        size = self.input_size[0]
        return size if size in INPUT_SIZES else 640

    @property
    def is_synthetic(self) -> bool:
        """Whether this is a model of the synthetic shapes (the bundled demo model): it knows
        nothing of photos."""
        return self.class_names == tuple(c.name for c in SYNTH_CLASSES)

    @property
    def num_layers(self) -> int:
        return self.model.config.decoder.num_layers

    def detector(
        self,
        size: int,
        letterbox: bool = False,
        budget: tuple[int, int] | None = None,
        backend: str = "torch",
    ) -> dfine.Detector:
        """A detector at ``size × size`` returning every query (threshold 0), made once.
        ``letterbox``: keep the aspect ratio (grey padding) instead of stretching. ``budget``:
        (decoder layers K, queries Q) the detector runs (its own copy of the model); None:
        every layer, every query. ``backend``: torch shares this model's weights (and can
        trace); another runtime runs an ONNX export of the model's file, made once per file,
        size and budget (cached in ``DFINE_HOME``)."""
        key = (int(size), bool(letterbox), budget, backend)
        k, q = budget or (None, None)
        with self._lock:
            if key not in self._detectors:
                weights = self.model if backend == "torch" else resolve(self.entry.source)
                self._detectors[key] = dfine.Detector(
                    weights, backend=backend, threshold=0.0, size=key[0], letterbox=key[1],
                    decoder_layers=k, num_queries=q,
                )  # fmt: skip
            return self._detectors[key]

    def fast_detector(
        self, size: int, letterbox: bool = False, budget: tuple[int, int] | None = None
    ) -> dfine.Detector:
        """:meth:`detector` on the fastest runtime installed here
        (:func:`app.gpu.plain_backend`), for plain detections that need no trace (the webcam,
        a video without tracking analysis); its detections equal the torch model's to float
        rounding (``tests/test_app_runtime.py``)."""
        return self.detector(size, letterbox, budget, gpu.plain_backend(self.entry.source))

    def check_budget(
        self, decoder_layers: int | None, num_queries: int | None
    ) -> tuple[int, int] | None:
        """``(K, Q)`` checked against this model (one line when out of range); None for the
        full budget (every layer, every query)."""
        cfg = self.model.config.decoder
        k, q = decoder_budget(cfg, decoder_layers, num_queries)
        return None if (k, q) == (cfg.num_layers, cfg.num_queries) else (k, q)

    def criterion(self) -> DFINECriterion:
        """The reference loss configuration for this model (GO-LSD analysis)."""
        with self._lock:
            if self._criterion is None:
                self._criterion = dfine.build_criterion(self.model)
            return self._criterion


def default_weights() -> Path:
    """The demo model when it is bundled, else the parity fixture."""
    return BUNDLED_WEIGHTS if BUNDLED_WEIGHTS.is_file() else FIXTURE_WEIGHTS


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _default_entry(path: Path) -> ModelEntry:
    fixture = _same_file(path, FIXTURE_WEIGHTS)
    if fixture:
        label = "Default: random parity fixture (D-FINE-N, meaningless detections)"
    elif _same_file(path, BUNDLED_WEIGHTS):
        label = "Default: D-FINE-N trained on synthetic shapes"
    else:
        label = f"Default: {hub.cached_repo_id(path) or path.name}"
    return ModelEntry(DEFAULT_KEY, label, str(path), "default", is_fixture=fixture)


def _zoo_entries() -> list[ModelEntry]:
    entries = []
    for name in zoo.names():
        e = zoo.get(name)
        ap = f"AP {e.ap:g}" + (" (Objects365)" if e.dataset == "obj365" else " (COCO)")
        fetch = "save it by hand (Google Drive)" if e.needs_browser else "downloads on first use"
        label = f"{name} · {e.params_m:g}M params · {ap} · {fetch}"
        entries.append(ModelEntry(name, label, name, "zoo"))
    return entries


class ModelStore:
    """Loads each model once and shares it between users (thread-safe).

    Args:
        default: the default model's checkpoint or a zoo name (downloaded on first use);
            ``None`` picks :func:`default_weights`.
        upload_dir: where uploaded checkpoints are kept (default: a new temp folder).
        max_loaded: how many models besides the default stay in memory.
        max_uploads: how many uploaded files stay on disk (oldest removed first).
    """

    def __init__(
        self,
        default: str | Path | None = None,
        *,
        upload_dir: str | Path | None = None,
        max_loaded: int = 2,
        max_uploads: int = 8,
    ) -> None:
        if default is not None and is_onnx(default):
            raise CheckpointError(ONNX_REFUSED.format(name=Path(default).name))
        # a zoo name is downloaded once, into DFINE_HOME; later runs find it there
        path = resolve(default) if default is not None else default_weights()
        self._entries: dict[str, ModelEntry] = {DEFAULT_KEY: _default_entry(path)}
        self._entries.update((e.key, e) for e in _zoo_entries())
        self._uploads: list[str] = []
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._budgets: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.max_loaded = max_loaded
        self.max_uploads = max_uploads
        self.upload_dir = Path(upload_dir) if upload_dir else temp_folder("dfine-app-uploads-")
        self.upload_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- entries
    @property
    def default(self) -> ModelEntry:
        return self._entries[DEFAULT_KEY]

    def choices(self) -> list[tuple[str, str]]:
        """``(label, key)`` of every model, the default first, then uploads, then the zoo."""
        with self._lock:
            entries = list(self._entries.values())
        order = {"default": 0, "upload": 1, "hub": 1, "zoo": 2}
        return [(e.label, e.key) for e in sorted(entries, key=lambda e: order[e.kind])]

    def entry(self, key: str | None) -> ModelEntry:
        """The entry of ``key`` (``None`` or empty: the default)."""
        key = (key or DEFAULT_KEY).strip()
        with self._lock:
            found = self._entries.get(key)
        if found is None and zoo.is_zoo_name(key):
            found = self._entries.get(zoo.get(key).name)
        if found is None and hub.is_hub_id(key):  # listed once it has loaded (see get)
            found = ModelEntry(key, f"Hugging Face Hub: {key}", key, "hub")
        if found is None:
            raise UserError(
                f"Unknown model {key!r}. Choose '{DEFAULT_KEY}', a zoo name such as "
                f"{zoo.names()[0]}, a Hugging Face Hub id (owner/name), or upload a checkpoint "
                "in the Model tab."
            )
        return found

    # ---------------------------------------------------------------- loading
    def get(self, key: str | None, on_load: Callable[[str], None] | None = None) -> LoadedModel:
        """The loaded model of ``key``, loading (and for zoo names downloading) it once."""
        entry = self.entry(key)
        with self._lock:
            hit = self._loaded.get(entry.key)
            if hit is not None:
                self._loaded.move_to_end(entry.key)
                return hit
            key_lock = self._loading.setdefault(entry.key, threading.Lock())
        with key_lock:  # one loader per key; the others wait and find it loaded
            with self._lock:
                hit = self._loaded.get(entry.key)
            if hit is not None:
                return hit
            if on_load is not None:
                on_load(entry.label)
            loaded = _load(entry)
            with self._lock:
                self._entries.setdefault(entry.key, entry)
                self._loaded[entry.key] = loaded
                self._evict()
            return loaded

    def _evict(self) -> None:
        others = [k for k in self._loaded if k != DEFAULT_KEY]
        for key in others[: max(len(others) - self.max_loaded, 0)]:
            del self._loaded[key]

    def budget(self, key: str | None) -> tuple[int, int] | None:
        """The decoder budget ``(K, Q)`` model ``key`` runs in every tab (None: the full one,
        every layer and query)."""
        return self._budgets.get(self.entry(key).key)

    def set_budget(
        self, key: str | None, decoder_layers: int | None, num_queries: int | None
    ) -> tuple[int, int] | None:
        """Run model ``key`` at the first ``decoder_layers`` decoder layers on the top
        ``num_queries`` proposals from now on (checked; None: the full budget)."""
        entry = self.entry(key)
        budget = self.get(entry.key).check_budget(decoder_layers, num_queries)
        with self._lock:
            if budget is None:
                self._budgets.pop(entry.key, None)
            else:
                self._budgets[entry.key] = budget
        return budget

    def is_loaded(self, key: str) -> bool:
        entry = self.entry(key)
        with self._lock:
            return entry.key in self._loaded

    # ---------------------------------------------------------------- uploads
    def add_upload(self, path: str | Path, original_name: str | None = None) -> LoadedModel:
        """Keep an uploaded checkpoint and load it (a ``CheckpointError`` when it is not a
        usable D-FINE checkpoint). The same file uploaded twice is loaded once."""
        src = Path(path)
        name = original_name or src.name
        suffix = Path(name).suffix.lower()
        if suffix == ".onnx":
            raise UserError(ONNX_REFUSED.format(name=name))
        if suffix not in CHECKPOINT_SUFFIXES:
            raise UserError(
                f"{name}: a checkpoint must be a .pth or .safetensors file, got '{suffix or name}'"
            )
        digest = file_sha256(src)[:16]
        key = f"{UPLOAD_PREFIX}{digest}"
        # under the user's file name, which tells a DEIM release (deim_…) from a D-FINE one
        dest = self.upload_dir / digest / Path(name).name
        if not dest.exists():
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, dest)
        entry = ModelEntry(key, f"Uploaded: {name} ({digest[:8]})", str(dest), "upload")
        with self._lock:
            known = key in self._entries
            self._entries[key] = entry
        try:
            loaded = self.get(key)
        except Exception as e:
            if not known:
                with self._lock:
                    self._entries.pop(key, None)
                shutil.rmtree(dest.parent, ignore_errors=True)
            if isinstance(e, CheckpointError):  # name the user's file, not our copy
                raise CheckpointError(str(e).replace(str(dest), name)) from None
            raise
        self._remember_upload(key)
        return loaded

    def _remember_upload(self, key: str) -> None:
        with self._lock:
            if key in self._uploads:
                self._uploads.remove(key)
            self._uploads.append(key)
            while len(self._uploads) > self.max_uploads:
                old = self._entries.pop(self._uploads.pop(0))
                self._loaded.pop(old.key, None)
                shutil.rmtree(Path(old.source).parent, ignore_errors=True)


def _load(entry: ModelEntry) -> LoadedModel:
    model = dfine.load_model(entry.source)  # zoo names download first (tqdm progress)
    params = sum(p.numel() for p in model.parameters())
    path = Path(entry.source)
    size = path.stat().st_size if path.is_file() else _zoo_file_size(entry)
    return LoadedModel(entry, model.deploy(), params, size)


def _zoo_file_size(entry: ModelEntry) -> int | None:
    if entry.kind != "zoo":
        return None
    path = zoo.cache_dir() / zoo.get(entry.source).filename
    return path.stat().st_size if path.is_file() else None
