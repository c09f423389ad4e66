"""OpenVINO backend (CPU): f32 by default; bf16 and INT8 with FDR's decoder kept in f32.

``precision``: ``"f32"`` (default for checkpoints and ONNX files; within the parity
tolerance), ``"bf16"``, or ``"int8"`` (an IR calibrated by ``dfine export --format openvino
--precision int8``). An IR (``.xml``) runs at the precision its metadata records.

``mixed`` says how reduced precision is applied: ``"split"`` (default) cuts the graph where
the decoder reads the encoder's feature maps and compiles the backbone + encoder reduced and
the decoder — distribution heads, residual refinement, softmax·W(n) integral, box decoding,
LQE, top-k — in f32 (:func:`dfine.precision.split_model`; an INT8 IR whose decoder layers are
quantized keeps them INT8 in the f32 tail, see :func:`dfine.precision.compile_plan`); ``"mark"`` keeps only the FDR parts
in f32 with OpenVINO's keep-in-f32 rt_info (measured to recover little, see
benchmarks/results/precision_cpu.md); ``"none"`` runs the whole graph reduced (OpenVINO's own
default on a bf16 CPU). ``hint="throughput"`` compiles for parallel infer requests
(:meth:`OpenVINOBackend.detect_many`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from dfine.backends.base import Backend, BatchDetections, Device, as_numpy
from dfine.errors import InputFileError, InvalidArgumentError, missing
from dfine.export import read_metadata
from dfine.precision import (
    FDR_PARTS,
    HEAD_PARTS,
    OPENVINO_PRECISIONS,
    check_precision,
    keep_in_f32,
    normalize_precision,
    split_model,
)

HINTS = ("latency", "throughput")
MIXED = ("split", "mark", "none")
OPENVINO_DEVICES = ("CPU", "GPU", "NPU", "AUTO")


def openvino_device(device: Device) -> str:
    """OpenVINO's device name for ``device``: ``None`` / ``"cpu"`` / ``torch.device("cpu")`` →
    ``"CPU"``; OpenVINO names (``"GPU"``, ``"GPU.1"``, ``"NPU"``, ``"AUTO"``, any case) pass
    through. CUDA devices are refused: OpenVINO runs on Intel hardware only."""
    if device is None:
        return "CPU"
    if isinstance(device, torch.device):
        device = device.type if device.index is None else f"{device.type}:{device.index}"
    name = str(device).strip().upper()
    if name.split(".")[0] in OPENVINO_DEVICES:
        return name
    if name.startswith("CUDA"):
        raise InvalidArgumentError(
            f"the OpenVINO backend runs on Intel CPU/GPU/NPU, not on CUDA device {device!r}: "
            "use device='cpu' (or 'GPU' for an Intel GPU), or the onnxruntime/tensorrt backend"
        )
    raise InvalidArgumentError(
        f"unknown OpenVINO device {device!r}: use one of {', '.join(OPENVINO_DEVICES)} (or 'cpu')"
    )


_CORE_LOCK = threading.Lock()
_CORE: list = []


def shared_core():
    """The process's one ``openvino.Core``, created on first use and never released.

    Every ``Core`` loads its own CPU plugin, and the plugin replaces the alternate signal stack
    of the thread that compiles with one it maps (sized for AMX state), putting the previous
    one back when that ``Core`` is destroyed. Cores destroyed out of creation order (two
    backends freed first-in first-out, a dict of them going away) leave the thread's
    alternate stack pointing at unmapped memory, and the next signal handled on it — every
    Python signal handler runs there (SA_ONSTACK), e.g. torch DataLoader's SIGCHLD handler
    when a subprocess ends — kills the process with SIGSEGV and no traceback. One ``Core``
    loads the plugin once and never unmaps its stack (and spares a plugin load per model).
    """
    try:  # every call: a missing package is named whether or not a Core exists
        import openvino as ov
    except ImportError as e:
        raise missing("the OpenVINO backend", "openvino") from e
    with _CORE_LOCK:
        if not _CORE:
            _CORE.append(ov.Core())
        return _CORE[0]


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: tuple[int, int] | None = None,
        device: Device = None,
        threads: int | None = None,
        precision: str | None = None,
        mixed: str | None = None,
        hint: str = "latency",
        requests: int | None = None,
    ) -> None:
        if hint not in HINTS:
            raise InvalidArgumentError(f"hint must be one of {', '.join(HINTS)}, got {hint!r}")
        if mixed is not None and mixed not in MIXED:
            raise InvalidArgumentError(f"mixed must be one of {', '.join(MIXED)}, got {mixed!r}")
        self.ov_device = device = openvino_device(device)
        core = shared_core()
        if Path(weights).suffix == ".xml":
            meta = self._init_from_ir(Path(weights), size)
        else:
            meta = self._init_from_onnx(weights, size)
        stored = normalize_precision(meta.get("precision", "f32"))
        self.precision = normalize_precision(precision or stored)
        check_precision(self.precision, OPENVINO_PRECISIONS)
        if stored in ("int8", "bf16") and self.precision != stored:
            raise InvalidArgumentError(
                f"{self.path} was exported with precision {stored}; pass precision='{stored}' "
                f"(or none), or export again with --precision {self.precision}"
            )
        if self.precision == "int8" and stored != "int8":
            raise InvalidArgumentError(
                "precision int8 needs a calibrated model: dfine export WEIGHTS --format openvino "
                "--precision int8 --calibration IMAGES, then load the .xml"
            )
        self.mixed = "none" if self.precision == "f32" else (mixed or meta.get("mixed", "split"))
        reduced = meta.get("head_precision", "bf16") if self.precision != "f32" else "f32"
        self.reduced_hint = reduced
        config = {"PERFORMANCE_HINT": hint.upper()}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if requests:
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = requests
        model = core.read_model(str(self.path))

        def compile_(m, precision_hint: str):
            return core.compile_model(
                m, device, {**config, "INFERENCE_PRECISION_HINT": precision_hint}
            )

        if self.mixed == "split":
            reduced_parts = meta.get("reduced_parts", HEAD_PARTS)
            head_parts = [p for p in reduced_parts if p in HEAD_PARTS] or HEAD_PARTS
            head, tail, self._features = split_model(model, head_parts)
            self.stages = [compile_(head, reduced), compile_(tail, "f32")]
        else:
            if self.mixed == "mark":
                model = keep_in_f32(model, FDR_PARTS)
            self.stages = [compile_(model, reduced)]
        self.compiled = self.stages[-1]
        self._local = threading.local()
        self.hint = hint

    def _init_from_ir(self, path: Path, size) -> dict:

        if not path.exists():
            raise InputFileError(f"OpenVINO IR not found: {path}")
        self.path = path
        meta = read_metadata(path)
        if size is not None and tuple(size) != tuple(meta["input_size"]):
            raise InvalidArgumentError(
                f"{path} has a fixed input size {meta['input_size']}; got size {size}"
            )
        self.input_size = tuple(meta["input_size"])
        self.num_classes = meta["num_classes"]
        self.class_names = tuple(meta["class_names"]) if meta["class_names"] else None
        self.decoder_layers, self.num_queries = meta["decoder_layers"], meta["num_queries"]
        return meta

    def _requests(self):
        """This thread's infer requests (one per stage)."""
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = [s.create_infer_request() for s in self.stages]
        return requests

    def _run(self, images: np.ndarray, sizes: np.ndarray) -> BatchDetections:
        requests = self._requests()
        feed = {"images": images, "orig_target_sizes": sizes}
        if len(requests) == 2:
            feats = requests[0].infer({"images": images}).to_tuple()
            feed.update(zip(self._features, feats))
        labels, boxes, scores = requests[-1].infer(feed).to_tuple()
        return BatchDetections(
            boxes=torch.from_numpy(np.array(boxes)),
            scores=torch.from_numpy(np.array(scores)),
            labels=torch.from_numpy(np.array(labels, dtype=np.int64)),
        )

    def detect(self, images: torch.Tensor, orig_sizes: torch.Tensor) -> BatchDetections:
        return self._run(as_numpy(images), as_numpy(orig_sizes, np.int64))

    @property
    def optimal_requests(self) -> int:
        """How many infer requests the compiled model runs best in parallel."""
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def detect_many(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], requests: int | None = None
    ) -> list[BatchDetections]:
        """Detections of every ``(images, orig_sizes)`` batch, ``requests`` of them in flight
        at once (default: the compiled model's optimal number; OpenVINO releases the GIL while
        it infers); results in input order."""
        from concurrent.futures import ThreadPoolExecutor

        workers = requests or self.optimal_requests
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda b: self.detect(*b), batches))
