"""``Detector``: any image in, ``Detections`` out.

det = dfine.Detector("dfine_n_coco.pth", threshold=0.5)   # or an exported "model.onnx"
dets = det("street.jpg")          # Detections in original pixel coordinates
dets.plot().save("street_pred.jpg")
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from dfine.backends import BACKENDS, create_backend
from dfine.detections import Detections
from dfine.io import ImageSource, load_image
from dfine.model import DFINE
from dfine.nn.decoder import DecoderTrace
from dfine.postprocess import BatchDetections, topk_detections
from dfine.precision import normalize_precision
from dfine.preprocess import Letterbox, letterbox_tensor, parse_size, to_input_tensor
from dfine.sources import default_backend
from dfine.video import detect_video


class Detector:
    """A ready-to-use detector.

    Args:
        weights: a checkpoint path (reference ``.pth`` or project ``.safetensors``), a zoo name,
            a ``DFINE`` model, or (non-torch backends) an exported ``.onnx`` file.
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``
            (see :mod:`dfine.backends`); only ``torch`` can :meth:`trace`. Default: from the
            weights — ``onnxruntime`` for an ``.onnx`` file, else ``torch``.
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
        letterbox: keep the aspect ratio: resize to fit the input size and pad with grey
            (boxes are mapped back exactly). Default ``False``: stretch to the input size,
            as the reference does (parity holds only then).
        decoder_layers: run only the first K decoder layers (the reference's ``eval_idx``);
            ``None``: every layer. Detections then equal the trace's layer K.
        num_queries: keep the top Q encoder proposals; ``None``: the model's (300). Exported
            files run the budget they were exported with (``dfine export --decoder-layers``).
        **backend_options: passed to the backend (e.g. ``threads``).
    """

    def __init__(
        self,
        weights: str | os.PathLike | DFINE,
        *,
        backend: str | None = None,
        threshold: float = 0.5,
        size: int | Sequence[int] | None = None,
        device: str | torch.device | None = None,
        deploy: bool = True,
        max_detections: int = 300,
        class_names: Sequence[str] | None = None,
        precision: str | None = None,
        letterbox: bool = False,
        decoder_layers: int | None = None,
        num_queries: int | None = None,
        **backend_options,
    ) -> None:
        backend = backend or default_backend(weights)
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
        self.backend = create_backend(
            backend,
            weights,
            size=hw,
            device=device,
            decoder_layers=decoder_layers,
            num_queries=num_queries,
            **backend_options,
        )
        self.device = self.backend.device
        self.size = self.backend.input_size
        num_classes = self.backend.num_classes
        names = class_names or self.backend.class_names
        if names is None:
            names = tuple(f"class {i}" for i in range(num_classes))
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names given for {num_classes} classes")
        self.class_names = tuple(names)
        self.letterbox = bool(letterbox)

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
        rgb, x, _ = self._prepare(image, color_order)
        return rgb, x

    def _prepare(
        self, image: ImageSource, color_order: str
    ) -> tuple[np.ndarray, torch.Tensor, Letterbox | None]:
        """The decoded image, its input tensor and (letterbox only) the map back."""
        rgb = load_image(image, color_order=color_order)
        if self.letterbox:
            return (rgb, *letterbox_tensor(rgb, self.size))
        return rgb, to_input_tensor(rgb, self.size), None

    def _box_sizes(self, rgbs: list[np.ndarray]) -> torch.Tensor:
        """``[B, 2]`` the ``(w, h)`` the backend scales its boxes to: the original image's, or
        the input size when letterboxing (the boxes are mapped back afterwards)."""
        if self.letterbox:
            return torch.tensor([[self.size[1], self.size[0]]] * len(rgbs))
        return torch.tensor([[r.shape[1], r.shape[0]] for r in rgbs])

    def _inputs(
        self, images: list[ImageSource], color_order: str
    ) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor, list[Letterbox] | None]:
        """Decoded images, the input batch, the sizes the backend scales its boxes to and the
        letterbox maps (``None`` for the stretch resize)."""
        rgbs, tensors, maps = zip(*(self._prepare(im, color_order) for im in images))
        rgbs = list(rgbs)
        return (
            rgbs,
            torch.cat(tensors),
            self._box_sizes(rgbs),
            (list(maps) if self.letterbox else None),
        )

    def _kept(
        self,
        results: BatchDetections,
        n: int,
        image_size: tuple[int, int],
        threshold: float,
        lb: Letterbox | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``n``'s kept detections among the top ``max_detections``: the mask (score
        above ``threshold``; with a letterbox also some area inside the image, not only in
        the padding) and every box in original pixels, clipped to the image ``(w, h)``."""
        scores = results.scores[n, : self.max_detections]
        boxes = results.boxes[n, : self.max_detections].clone()
        if lb is not None:
            boxes = lb.to_original(boxes)
        w, h = image_size
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # the reference leaves boxes unclipped
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = scores > threshold
        if lb is not None:
            keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return keep, boxes

    def _detections(
        self,
        results: BatchDetections,
        rgbs: list[np.ndarray],
        threshold: float,
        keep_image: bool,
        maps: list[Letterbox] | None = None,
    ) -> list[Detections]:
        """Threshold, cap and clip the backend's detections of a batch (CPU tensors); with
        letterbox ``maps`` the boxes come in input pixels and are mapped back first."""
        return [
            self._detection(results, n, rgb, threshold, keep_image, maps and maps[n])[0]
            for n, rgb in enumerate(rgbs)
        ]

    def _detection(
        self,
        results: BatchDetections,
        n: int,
        rgb: np.ndarray,
        threshold: float,
        keep_image: bool,
        lb: Letterbox | None,
    ) -> tuple[Detections, torch.Tensor]:
        """Image ``n``'s :class:`Detections` and the mask of the top ``max_detections`` they
        keep (see :meth:`_kept`)."""
        h, w = rgb.shape[:2]
        keep, boxes = self._kept(results, n, (w, h), threshold, lb)
        det = Detections(
            boxes=boxes[keep].numpy(),
            scores=results.scores[n, : self.max_detections][keep].numpy(),
            labels=results.labels[n, : self.max_detections][keep].numpy(),
            class_names=self.class_names,
            image_size=(w, h),
            image=rgb if keep_image else None,
        )
        return det, keep

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
        rgbs, batch, sizes, maps = self._inputs(images, color_order)
        t1 = time.perf_counter()
        results = self.backend.detect(batch, sizes)
        t2 = time.perf_counter()
        dets = self._detections(results, rgbs, threshold, keep_image, maps)
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

    def video(
        self,
        source: str | os.PathLike,
        *,
        track: bool = True,
        stride: int = 1,
        max_frames: int | None = None,
        threshold: float | None = None,
        batch: int = 1,
    ) -> Iterator[Detections]:
        """Detect (and track) objects in a video file or a folder of frames.

        ``for dets in det.video("clip.mp4"): ...`` yields one :class:`Detections` per kept
        frame (every ``stride``-th, at most ``max_frames``), in original pixels, with
        ``frame_index``, ``time_s`` (the frame's timestamp), the frame as ``image`` and, with
        ``track=True``, a ByteTrack ``track_id`` per detection. Decoding runs in a worker
        thread; ``batch`` frames share one forward pass (worth it for ONNX Runtime/OpenVINO
        with a dynamic-batch export). Unreadable videos raise :class:`dfine.video.VideoError`.
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        return detect_video(
            self,
            source,
            track=track,
            stride=stride,
            max_frames=max_frames,
            threshold=threshold,
            batch=batch,
        )

    def trace(
        self, image: ImageSource, *, color_order: str = "RGB", threshold: float | None = None
    ) -> tuple[Detections, DecoderTrace, torch.Tensor]:
        """Detections plus the full decoder trace of one image (torch backend).

        Returns ``(detections, trace, query_index)`` where ``query_index [N]`` is the decoder
        query each detection came from, so ``trace.boxes[:, 0, query_index]`` are the boxes of
        every layer for the returned detections. The trace's boxes are normalised to the
        original image either way: with ``letterbox=True`` they are mapped out of the padded
        input by the same map as the detections' boxes.
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        t0 = time.perf_counter()
        rgb, x, lb = self._prepare(image, color_order)
        t1 = time.perf_counter()
        trace = self.model.trace(x.to(self.device))
        t2 = time.perf_counter()
        sizes = self._box_sizes([rgb]).to(trace.boxes.device)
        top = topk_detections(trace.logits[-1], trace.boxes[-1], sizes, self.max_detections)
        results = top.cpu()
        det, keep = self._detection(results, 0, rgb, threshold, keep_image=True, lb=lb)
        if lb is not None:
            trace = _trace_to_original(trace, lb, det.image_size)
        det.speed = {
            "preprocess": (t1 - t0) * 1000,
            "inference": (t2 - t1) * 1000,
            "postprocess": (time.perf_counter() - t2) * 1000,
        }
        return det, trace, results.queries[0, : self.max_detections][keep]


def _trace_to_original(
    trace: DecoderTrace, lb: Letterbox, image_size: tuple[int, int]
) -> DecoderTrace:
    """A letterboxed image's trace with every box (b0, pre-head, every layer) normalised to
    the original image instead of the padded input, by :meth:`Letterbox.to_original_normalized`
    (the map ``Detector`` applies to its boxes): ``x × image width`` is then an original
    pixel, and an FDR edge offset ``d × w / reg_scale`` is in original-image units too, as
    for the stretch resize."""

    def remap(boxes: torch.Tensor | None) -> torch.Tensor | None:
        if boxes is None:
            return None
        return lb.to_original_normalized(boxes, trace.input_size, image_size)

    return dataclasses.replace(
        trace,
        init_boxes=remap(trace.init_boxes),
        pre_boxes=remap(trace.pre_boxes),
        boxes=remap(trace.boxes),
    )


def _precision_for(backend: str, precision: str) -> str:
    """``precision`` checked and spelled as ``backend`` expects it."""

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
