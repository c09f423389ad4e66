"""``Detector``: any image in, ``Detections`` out.

det = dfine.Detector("dfine_n_coco.pth", threshold=0.5)
dets = det("street.jpg")          # Detections in original pixel coordinates
dets.plot().save("street_pred.jpg")
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from dfine.backends import BACKENDS, create_backend
from dfine.detections import Detections
from dfine.io import ImageSource, load_image
from dfine.model import DFINE
from dfine.nn.decoder import DecoderTrace
from dfine.postprocess import BatchDetections, topk_detections


def parse_size(size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """``None`` → default; ``640`` → (640, 640); ``(h, w)`` → (h, w). Must be multiples of 32."""
    if size is None:
        return tuple(default)
    hw = (
        (int(size), int(size))
        if isinstance(size, (int, np.integer))
        else tuple(int(s) for s in size)
    )
    if len(hw) != 2 or any(s < 64 or s % 32 for s in hw):
        raise ValueError(f"input size must be one or two multiples of 32 (>= 64), got {size!r}")
    return hw


def to_input_tensor(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB → ``[1, 3, h, w]`` float in [0, 1], resized with PIL's bilinear
    filter (as the reference's inference pipeline: ``T.Resize`` on a PIL image, ``ToTensor``)."""
    h, w = size
    if rgb.shape[:2] != (h, w):
        rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)  # no copy
    return x.float().div_(255.0)


class Detector:
    """A ready-to-use detector.

    Args:
        weights: a checkpoint path (reference ``.pth`` or project ``.safetensors``), a zoo name,
            a ``DFINE`` model, or (non-torch backends) an exported ``.onnx`` file.
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``
            (see :mod:`dfine.backends`); only ``torch`` can :meth:`trace`.
        threshold: minimum score of a returned detection, in [0, 1].
        size: network input size, ``int`` or ``(height, width)``, multiples of 32; default the
            model's own (640 for the reference checkpoints). Fixed at export for ONNX files.
        device: ``torch.device``, ``"cpu"``, ``"cuda:0"`` (each backend translates it, e.g.
            OpenVINO's ``"CPU"``); ``None``: the backend's default (``cuda:0`` for TensorRT,
            the CPU for the others).
        deploy: torch backend: fuse conv+BN and re-parameterised blocks for speed (outputs
            equal to float rounding). ``False`` keeps the reference's exact arithmetic.
        max_detections: at most this many detections per image (top by score, <= 300).
        class_names: override the model's class names.
        precision: ``"f32"``, ``"bf16"`` or ``"int8"`` (OpenVINO: backbone + encoder reduced,
            the FDR decoder in f32; INT8 needs an IR from ``dfine export --precision int8``),
            ``"fp16"`` (TensorRT, ONNX Runtime CUDA with an fp16 export). ``None``: f32, or the
            precision an exported file records.
        **backend_options: passed to the backend (e.g. ``threads``).
    """

    def __init__(
        self,
        weights: str | os.PathLike | DFINE,
        *,
        backend: str = "torch",
        threshold: float = 0.5,
        size: int | Sequence[int] | None = None,
        device: str | torch.device | None = None,
        deploy: bool = True,
        max_detections: int = 300,
        class_names: Sequence[str] | None = None,
        precision: str | None = None,
        **backend_options,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        self.threshold = _check_threshold(threshold)
        if not 1 <= max_detections <= 300:
            raise ValueError(f"max_detections must be in [1, 300], got {max_detections}")
        self.max_detections = int(max_detections)
        hw = None if size is None else parse_size(size, (640, 640))
        if backend == "torch":
            backend_options.update(deploy=deploy, num_top=self.max_detections)
        if precision is not None:
            precision = _precision_for(backend, precision)
            if backend != "torch":  # the torch backend is f32 only
                backend_options["precision"] = precision
        self.backend = create_backend(backend, weights, size=hw, device=device, **backend_options)
        self.device = self.backend.device
        self.size = self.backend.input_size
        num_classes = self.backend.num_classes
        names = class_names or self.backend.class_names
        if names is None:
            names = tuple(f"class {i}" for i in range(num_classes))
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names given for {num_classes} classes")
        self.class_names = tuple(names)

    @property
    def model(self) -> DFINE:
        """The torch model (torch backend only)."""
        if not hasattr(self.backend, "model"):
            raise AttributeError(f"the {self.backend.name} backend has no torch model")
        return self.backend.model

    # ------------------------------------------------------------------ steps
    def preprocess(
        self, image: ImageSource, color_order: str = "RGB"
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Decode and orient the image, resize it to the input size: ``(rgb, [1, 3, h, w])``."""
        rgb = load_image(image, color_order=color_order)
        return rgb, to_input_tensor(rgb, self.size)

    def _detections(
        self,
        results: BatchDetections,
        rgbs: list[np.ndarray],
        threshold: float,
        keep_image: bool,
    ) -> list[Detections]:
        """Threshold, cap and clip the backend's detections of a batch (CPU tensors)."""
        dets = []
        for n, rgb in enumerate(rgbs):
            keep = results.scores[n, : self.max_detections] > threshold
            h, w = rgb.shape[:2]
            boxes = results.boxes[n, : self.max_detections][keep].clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # the reference leaves boxes unclipped
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            dets.append(
                Detections(
                    boxes=boxes.numpy(),
                    scores=results.scores[n, : self.max_detections][keep].numpy(),
                    labels=results.labels[n, : self.max_detections][keep].numpy(),
                    class_names=self.class_names,
                    image_size=(w, h),
                    image=rgb if keep_image else None,
                )
            )
        return dets

    # ------------------------------------------------------------------ public
    def __call__(
        self,
        image: ImageSource,
        *,
        color_order: str = "RGB",
        threshold: float | None = None,
        keep_image: bool = True,
    ) -> Detections:
        """Detect objects in one image (path, file object, bytes, PIL image or numpy array;
        ``color_order`` says whether a numpy array is RGB or BGR)."""
        return self.predict(
            [image], color_order=color_order, threshold=threshold, keep_image=keep_image
        )[0]

    def predict(
        self,
        images: Iterable[ImageSource],
        *,
        color_order: str = "RGB",
        threshold: float | None = None,
        keep_image: bool = True,
    ) -> list[Detections]:
        """Detect objects in several images, run as one batch. Per-image speed is the batch's
        time divided by the number of images."""
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        images = list(images)
        if not images:
            return []
        t0 = time.perf_counter()
        rgbs, tensors = zip(*(self.preprocess(im, color_order) for im in images))
        batch = torch.cat(tensors)
        sizes = torch.tensor([[r.shape[1], r.shape[0]] for r in rgbs])
        t1 = time.perf_counter()
        results = self.backend.detect(batch, sizes)
        t2 = time.perf_counter()
        dets = self._detections(results, list(rgbs), threshold, keep_image)
        t3 = time.perf_counter()
        n = len(dets)
        speed = {
            "preprocess": (t1 - t0) * 1000 / n,
            "inference": (t2 - t1) * 1000 / n,
            "postprocess": (t3 - t2) * 1000 / n,
        }
        for d in dets:
            d.speed = dict(speed)
        return dets

    def trace(
        self, image: ImageSource, *, color_order: str = "RGB", threshold: float | None = None
    ) -> tuple[Detections, DecoderTrace, torch.Tensor]:
        """Detections plus the full decoder trace of one image (torch backend).

        Returns ``(detections, trace, query_index)`` where ``query_index [N]`` is the decoder
        query each detection came from, so ``trace.boxes[:, 0, query_index]`` are the boxes of
        every layer for the returned detections.
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        t0 = time.perf_counter()
        rgb, x = self.preprocess(image, color_order)
        t1 = time.perf_counter()
        trace = self.model.trace(x.to(self.device))
        t2 = time.perf_counter()
        sizes = torch.tensor([[rgb.shape[1], rgb.shape[0]]], device=trace.boxes.device)
        top = topk_detections(trace.logits[-1], trace.boxes[-1], sizes, self.max_detections)
        results = top.cpu()
        det = self._detections(results, [rgb], threshold, keep_image=True)[0]
        keep = results.scores[0, : self.max_detections] > threshold
        det.speed = {
            "preprocess": (t1 - t0) * 1000,
            "inference": (t2 - t1) * 1000,
            "postprocess": (time.perf_counter() - t2) * 1000,
        }
        return det, trace, results.queries[0, : self.max_detections][keep]


def _precision_for(backend: str, precision: str) -> str:
    """``precision`` checked and spelled as ``backend`` expects it."""
    from dfine.precision import normalize_precision

    precision = normalize_precision(precision)
    if backend == "torch" and precision != "f32":
        raise ValueError(
            f"the torch backend runs f32; for {precision} use backend='openvino'"
            + (" or 'tensorrt'" if precision == "fp16" else "")
        )
    if backend == "tensorrt":
        if precision not in ("f32", "fp16"):
            raise ValueError(f"the tensorrt backend runs f32 or fp16, not {precision}")
        return "fp32" if precision == "f32" else precision
    return precision


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold
