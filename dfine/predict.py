"""``Detector``: any image in, ``Detections`` out.

det = dfine.Detector("dfine_n_coco.pth", threshold=0.5)   # or an exported "model.onnx"
dets = det("street.jpg")          # Detections in original pixel coordinates
dets.plot().save("street_pred.jpg")
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dfine.backends import BACKENDS, FASTEST, create_backend
from dfine.detections import Detections
from dfine.errors import InvalidArgumentError
from dfine.frames import FrameSource, Item, is_many, open_frames
from dfine.io import ImageLoadError, ImageSource, load_image
from dfine.model import DFINE
from dfine.nn.decoder import DecoderTrace
from dfine.postprocess import BatchDetections, topk_detections
from dfine.precision import normalize_precision
from dfine.preprocess import Letterbox, letterbox_tensor, parse_size, to_input_tensor
from dfine.resources import demo_weights
from dfine.sources import default_backend, fastest_backend
from dfine.video import MAX_PIXELS, TRACK_LOW_THRESHOLD, Tracker

DEFAULT_BATCH = 8
"""Images per forward pass of :meth:`Detector.stream` (and ``predict``) unless told."""


class Detector:
    """A ready-to-use detector.

    Args:
        weights: a checkpoint path (reference ``.pth`` or project ``.safetensors``), a zoo name,
            a Hugging Face Hub id, a ``DFINE`` model, or (non-torch backends) an exported
            ``.onnx`` file; ``None`` (the default): the bundled demo model, as ``dfine predict``
            without ``--weights``.
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``
            (see :mod:`dfine.backends`); only ``torch`` can :meth:`trace`. ``"fastest"``: the
            fastest runtime installed here (:func:`dfine.sources.fastest_backend`: OpenVINO,
            else ONNX Runtime, else torch on the CPU; ``detector.backend.name`` says which).
            Default: from the weights — ``onnxruntime`` for an ``.onnx`` file, else ``torch``.
        threshold: minimum score of a returned detection, in [0, 1].
        size: network input size, ``int`` or ``(height, width)``, multiples of 32; default the
            model's own (640 for the reference checkpoints). Fixed at export for ONNX files.
        device: ``torch.device``, ``"cpu"``, ``"cuda:0"`` (each backend translates it, e.g.
            OpenVINO's ``"CPU"``); ``None``: the backend's default (``cuda:0`` for TensorRT,
            the CPU for the others).
        deploy: torch backend: fuse conv+BN and re-parameterised blocks for speed (outputs
            equal to float rounding). ``False`` keeps the reference's exact arithmetic.
            A ``DFINE`` model passed in is never changed: it is copied unless it is already in
            eval mode on ``device`` (and fused, for ``deploy=True``), when it is shared.
        max_detections: at most this many detections per image (top by score, <= 300).
        class_names: override the model's class names.
        precision: ``"f32"``, ``"bf16"`` or ``"int8"`` (OpenVINO: backbone + encoder reduced,
            the FDR decoder in f32; INT8 needs an IR from ``dfine export --precision int8``),
            ``"fp16"`` (TensorRT, ONNX Runtime CUDA with an fp16 export). ``None``: f32, or the
            precision an exported file records.
        letterbox: keep the aspect ratio: resize to fit the input size and pad with grey
            (boxes are mapped back exactly). Default ``False``: stretch to the input size,
            as the reference does (parity holds only then).
        family: ``"dfine"`` or ``"deim"`` (DEIM-D-FINE's SiLU decoder) for a checkpoint whose
            metadata and name (``deim…``) do not say it; torch backend only.
        decoder_layers: run only the first K decoder layers (the reference's ``eval_idx``);
            ``None``: every layer. Detections then equal the trace's layer K.
        num_queries: keep the top Q encoder proposals; ``None``: the model's (300). Exported
            files run the budget they were exported with (``dfine export --decoder-layers``).
        **backend_options: passed to the backend (e.g. ``threads``).
    """

    def __init__(
        self,
        weights: str | os.PathLike | DFINE | None = None,
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
        family: str | None = None,
        decoder_layers: int | None = None,
        num_queries: int | None = None,
        **backend_options,
    ) -> None:
        if weights is None:  # as `dfine predict` without --weights: the bundled demo model
            weights = demo_weights()
        if backend == FASTEST:
            backend = fastest_backend(weights, device)
        backend = backend or default_backend(weights)
        if family is not None:
            if backend != "torch":
                raise InvalidArgumentError(
                    f"family= applies to a checkpoint run by the torch backend, not {backend}: "
                    "export it with `dfine export W --family deim` (the export records it)"
                )
            backend_options["family"] = family
        if backend not in BACKENDS:
            raise InvalidArgumentError(
                f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}"
            )
        self.threshold = _check_threshold(threshold)
        if not 1 <= max_detections <= 300:
            raise InvalidArgumentError(f"max_detections must be in [1, 300], got {max_detections}")
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
            raise InvalidArgumentError(f"{len(names)} class names given for {num_classes} classes")
        self.class_names = tuple(names)
        self.letterbox = bool(letterbox)
        self.weights = _weights_name(weights)

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

    def _kept(
        self,
        results: BatchDetections,
        n: int,
        image_size: tuple[int, int],
        threshold: float,
        lb: Letterbox | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``n``'s kept detections among the top ``max_detections``: the mask (score
        at least ``threshold``; with a letterbox also some area inside the image, not only in
        the padding) and every box in original pixels, clipped to the image ``(w, h)``."""
        scores = results.scores[n, : self.max_detections]
        boxes = results.boxes[n, : self.max_detections].clone()
        if lb is not None:
            boxes = lb.to_original(boxes)
        w, h = image_size
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # the reference leaves boxes unclipped
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = scores >= threshold
        if lb is not None:
            keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return keep, boxes

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
        source: Any,
        *,
        color_order: str = "RGB",
        threshold: float | None = None,
        keep_image: bool = True,
        batch: int = DEFAULT_BATCH,
    ) -> Detections | list[Detections]:
        """Detect objects in one image (path, file object, bytes, PIL image or numpy array;
        ``color_order`` says whether a numpy array is RGB or BGR) → :class:`Detections`; in
        several (a list, a folder, a glob, a video: see :meth:`stream`) → a list of them,
        ``batch`` images per forward pass."""
        dets = self.predict(
            source, color_order=color_order, threshold=threshold, keep_image=keep_image, batch=batch
        )
        return dets if is_many(source) else dets[0]

    def predict(
        self,
        images: Any,
        *,
        color_order: str = "RGB",
        threshold: float | None = None,
        keep_image: bool = True,
        batch: int = DEFAULT_BATCH,
    ) -> list[Detections]:
        """``list(self.stream(images, ...))``: one :class:`Detections` per image, ``batch``
        images per forward pass. Per-image speed is the batch's time divided by its size."""
        return list(
            self.stream(
                images,
                color_order=color_order,
                threshold=threshold,
                keep_image=keep_image,
                batch=batch,
            )
        )

    def stream(
        self,
        source: Any,
        *,
        batch: int = DEFAULT_BATCH,
        trace: bool = False,
        track: bool = False,
        stride: int = 1,
        max_frames: int | None = None,
        threshold: float | None = None,
        max_detections: int | None = None,
        color_order: str = "RGB",
        keep_image: bool = True,
        on_error: Callable[[Item, ImageLoadError], None] | None = None,
        max_pixels: int = MAX_PIXELS,
        fps: float | None = None,
        as_video: bool = False,
    ) -> Iterator[Detections] | Iterator[tuple[Detections, DecoderTrace, torch.Tensor]]:
        """The one inference pipeline: any source in, one result per frame out, lazily.

        ``source``: an image (path, bytes, file object, PIL image, numpy array), a list of
        them, a folder of images, a glob (``"photos/*.jpg"``), a video file, an open
        :class:`dfine.video.FrameReader`, or any iterable of frames (numpy arrays, e.g. a
        webcam). Frames are decoded as they are needed and go through the model ``batch`` at a
        time; nothing is kept beyond its batch but what is yielded (the frame as ``image``
        unless ``keep_image=False``). Every ``stride``-th frame is kept, at most
        ``max_frames``.

        Each frame yields its :class:`Detections` (original pixels, scores at least
        ``threshold``, the top ``max_detections``; a video frame's ``frame_index`` and
        ``time_s``; ``source``: the file it came from). ``track=True``: ByteTrack ``track_id`` s
        (the tracker sees every detection down to :data:`dfine.video.TRACK_LOW_THRESHOLD`
        first; the threshold and the cap apply after it). ``trace=True`` (torch backend):
        ``(detections, trace, query_index)`` per frame, as :meth:`trace` returns.

        A video is opened and checked when this is called; an image file is decoded when its
        batch comes: one that cannot be read raises :class:`dfine.io.ImageLoadError`, or is
        passed to ``on_error(item, error)`` and skipped. ``as_video``: read a path as a video
        even when it is a folder (of equal-sized frames, at ``fps``).
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidArgumentError(f"batch must be a positive integer, got {batch!r}")
        cap = self.max_detections if max_detections is None else int(max_detections)
        if trace and not hasattr(self.backend, "model"):
            raise InvalidArgumentError(
                f"trace=True needs the torch backend, not {self.backend.name}"
            )
        frames = open_frames(
            source,
            stride=stride,
            max_frames=max_frames,
            max_pixels=max_pixels,
            fps=fps,
            as_video=as_video,
        )
        try:
            tracker = Tracker(frames.fps, threshold=threshold) if track else None
        except BaseException:
            frames.close()
            raise
        run = _Run(threshold, cap, trace, tracker, color_order, keep_image, on_error)
        return self._stream(frames, batch, run)

    def _stream(self, frames: FrameSource, batch: int, run: _Run) -> Iterator[Any]:
        with frames:
            chunk: list[Item] = []
            for item in frames:
                chunk.append(item)
                if len(chunk) == batch:
                    yield from self._batch(chunk, run)
                    chunk = []
            if chunk:
                yield from self._batch(chunk, run)

    def _batch(self, chunk: list[Item], run: _Run) -> Iterator[Any]:
        """One forward pass over ``chunk``; its results, frame by frame."""
        t0 = time.perf_counter()
        items, rgbs, tensors, maps = [], [], [], []
        for item in chunk:
            try:
                rgb, x, lb = self._prepare(item.data, run.color_order)
            except ImageLoadError as e:
                if run.on_error is None:
                    raise
                run.on_error(item, e)
                continue
            items.append(item)
            rgbs.append(rgb)
            tensors.append(x)
            maps.append(lb)
        if not items:
            return
        x, sizes = torch.cat(tensors), self._box_sizes(rgbs)
        t1 = time.perf_counter()
        trace = None
        low = min(run.threshold, TRACK_LOW_THRESHOLD) if run.tracker else run.threshold
        if run.trace:
            trace = self.model.trace(x.to(self.device))
            sizes = sizes.to(trace.boxes.device)
            results = topk_detections(
                trace.logits[-1], trace.boxes[-1], sizes, self.max_detections
            ).cpu()
        else:
            results = self.backend.detect(x, sizes)
        t2 = time.perf_counter()
        n = len(items)
        speed = {"preprocess": (t1 - t0) * 1000 / n, "inference": (t2 - t1) * 1000 / n}
        for i, (item, rgb, lb) in enumerate(zip(items, rgbs, maps)):
            t3 = time.perf_counter()
            det, keep = self._detection(results, i, rgb, low, run.keep_image, lb)
            det.source = item.source
            if item.time_s is not None:  # a video frame
                det.frame_index, det.time_s = item.index, item.time_s
            queries = results.queries[i, : self.max_detections][keep] if trace else None
            det.speed = dict(speed, postprocess=(time.perf_counter() - t3) * 1000)
            if run.tracker is not None:
                t4 = time.perf_counter()
                det = run.tracker.update(det, item.time_s)
                det.speed["track"] = (time.perf_counter() - t4) * 1000
            rows = np.flatnonzero(det.scores >= run.threshold)[: run.cap]
            det = det[rows]
            if trace is None:
                yield det
                continue
            one = trace.select(i)
            if lb is not None:
                one = _trace_to_original(one, lb, det.image_size)
            yield det, one, queries[torch.from_numpy(rows)]

    def video(
        self,
        source: str | os.PathLike,
        *,
        track: bool = True,
        stride: int = 1,
        max_frames: int | None = None,
        threshold: float | None = None,
        batch: int = 1,
        trace: bool = False,
    ) -> Iterator[Detections]:
        """Detect (and track) objects in a video file or a folder of frames: :meth:`stream`
        with the source read as a video.

        ``for dets in det.video("clip.mp4"): ...`` yields one :class:`Detections` per kept
        frame (every ``stride``-th, at most ``max_frames``), in original pixels, with
        ``frame_index``, ``time_s`` (the frame's timestamp), the frame as ``image`` and, with
        ``track=True``, a ByteTrack ``track_id`` per detection. Decoding runs in a worker
        thread; ``batch`` frames share one forward pass (worth it for ONNX Runtime/OpenVINO
        with a dynamic-batch export). Unreadable videos raise :class:`dfine.video.VideoError`.
        """
        return self.stream(
            source,
            as_video=True,
            track=track,
            stride=stride,
            max_frames=max_frames,
            threshold=threshold,
            batch=batch,
            trace=trace,
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
        if is_many(image):
            raise InvalidArgumentError(
                "Detector.trace takes one image; for several use stream(..., trace=True)"
            )
        return next(
            iter(
                self.stream(
                    image, trace=True, batch=1, color_order=color_order, threshold=threshold
                )
            )
        )

    def __repr__(self) -> str:
        h, w = self.size
        return (
            f"Detector(weights={self.weights!r}, backend={self.backend.name!r}, size={h}x{w}, "
            f"threshold={self.threshold:g}, device={str(self.device)!r}, "
            f"classes={len(self.class_names)}, max_detections={self.max_detections}"
            f"{', letterbox=True' if self.letterbox else ''})"
        )


@dataclass(frozen=True)
class _Run:
    """The settings of one :meth:`Detector.stream`."""

    threshold: float
    cap: int
    trace: bool
    tracker: Tracker | None
    color_order: str
    keep_image: bool
    on_error: Callable[[Item, ImageLoadError], None] | None


def _trace_to_original(
    trace: DecoderTrace, lb: Letterbox, image_size: tuple[int, int]
) -> DecoderTrace:
    """A letterboxed image's trace with every box (b0, pre-head, every layer) normalised to
    the original image instead of the padded input, by :meth:`Letterbox.to_original_normalized`
    (the map ``Detector`` applies to its boxes), and the attention's sampling points by the same
    map; ``input_extent`` says where the input (and the memory grids) lie in those coordinates.
    ``x × image width`` is then an original pixel, and an FDR edge offset ``d × w / reg_scale``
    is in original-image units too, as for the stretch resize."""

    def remap(boxes: torch.Tensor | None) -> torch.Tensor | None:
        if boxes is None:
            return None
        return lb.to_original_normalized(boxes, trace.input_size, image_size)

    def remap_points(points: torch.Tensor | None) -> torch.Tensor | None:
        if points is None:
            return None
        return lb.points_to_original_normalized(points, trace.input_size, image_size)

    corners = remap_points(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    return dataclasses.replace(
        trace,
        init_boxes=remap(trace.init_boxes),
        pre_boxes=remap(trace.pre_boxes),
        boxes=remap(trace.boxes),
        sampling_locations=remap_points(trace.sampling_locations),
        input_extent=tuple(corners.flatten().tolist()),
    )


def _weights_name(weights: str | os.PathLike | DFINE) -> str:
    """What ``repr(Detector)`` shows for its weights: the path or name, or the model's size."""
    if isinstance(weights, DFINE):
        return f"<DFINE {weights.config.size} model, {weights.num_classes} classes>"
    return os.fspath(weights)


def _precision_for(backend: str, precision: str) -> str:
    """``precision`` checked and spelled as ``backend`` expects it."""

    precision = normalize_precision(precision)
    if backend == "torch" and precision != "f32":
        raise InvalidArgumentError(
            f"the torch backend runs f32; for {precision} use backend='openvino'"
            + (" or 'tensorrt'" if precision == "fp16" else "")
        )
    if backend == "tensorrt":
        if precision not in ("f32", "fp16"):
            raise InvalidArgumentError(f"the tensorrt backend runs f32 or fp16, not {precision}")
        return "fp32" if precision == "f32" else precision
    return precision


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise InvalidArgumentError(f"threshold must be in [0, 1], got {threshold}")
    return threshold
