"""``Detector``: any image in, ``Detections`` out.

det = dfine.Detector("dfine_n_coco.pth", threshold=0.5)
dets = det("street.jpg")          # Detections in original pixel coordinates
dets.plot().save("street_pred.jpg")
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from dfine.checkpoint import load_model
from dfine.detections import Detections
from dfine.io import ImageSource, load_image
from dfine.model import DFINE
from dfine.nn.decoder import DecoderTrace
from dfine.postprocess import postprocess

BACKENDS = ("torch",)


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
            or a ``DFINE`` model.
        backend: ``"torch"``.
        threshold: minimum score of a returned detection, in [0, 1].
        size: network input size, ``int`` or ``(height, width)``, multiples of 32; default the
            model's own (640 for the reference checkpoints).
        device: torch device.
        deploy: fuse conv+BN and re-parameterised blocks for speed (outputs equal to float
            rounding). ``False`` keeps the reference's exact arithmetic.
        max_detections: at most this many detections per image (top by score).
        class_names: override the model's class names.
    """

    def __init__(
        self,
        weights: str | os.PathLike | DFINE,
        *,
        backend: str = "torch",
        threshold: float = 0.5,
        size: int | Sequence[int] | None = None,
        device: str | torch.device = "cpu",
        deploy: bool = True,
        max_detections: int = 300,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        self.threshold = _check_threshold(threshold)
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.max_detections = int(max_detections)
        self.device = torch.device(device)
        owned = not isinstance(weights, DFINE)
        model = load_model(weights, device=self.device) if owned else weights
        if deploy and not model.deployed:
            model = (model if owned else copy.deepcopy(model)).deploy()
        self.model = model.to(self.device).eval()
        self.backend = backend
        self.size = parse_size(size, model.config.eval_size)
        names = class_names or model.class_names
        if names is None:
            names = tuple(f"class {i}" for i in range(model.num_classes))
        if len(names) != model.num_classes:
            raise ValueError(f"{len(names)} class names given for {model.num_classes} classes")
        self.class_names = tuple(names)

    # ------------------------------------------------------------------ steps
    def preprocess(
        self, image: ImageSource, color_order: str = "RGB"
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Decode and orient the image, resize it to the input size: ``(rgb, [1, 3, h, w])``."""
        rgb = load_image(image, color_order=color_order)
        return rgb, to_input_tensor(rgb, self.size).to(self.device)

    def _detections(
        self,
        outputs: dict[str, torch.Tensor],
        rgbs: list[np.ndarray],
        threshold: float,
        keep_image: bool,
        queries: bool = False,
    ):
        """Postprocess, threshold and clip; optionally also the query index of each detection."""
        sizes = torch.tensor([[r.shape[1], r.shape[0]] for r in rgbs], device=self.device)
        results = postprocess(outputs, sizes, num_top=self.max_detections)
        dets, query_index = [], []
        for rgb, res in zip(rgbs, results):
            keep = res["scores"] > threshold
            h, w = rgb.shape[:2]
            boxes = res["boxes"][keep]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # the reference leaves boxes unclipped
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            dets.append(
                Detections(
                    boxes=boxes.cpu().numpy(),
                    scores=res["scores"][keep].cpu().numpy(),
                    labels=res["labels"][keep].cpu().numpy(),
                    class_names=self.class_names,
                    image_size=(w, h),
                    image=rgb if keep_image else None,
                )
            )
            query_index.append(res["queries"][keep].cpu())
        return (dets, query_index) if queries else dets

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

    @torch.inference_mode()
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
        t1 = time.perf_counter()
        outputs = self.model(batch)
        _sync(self.device)
        t2 = time.perf_counter()
        dets = self._detections(outputs, list(rgbs), threshold, keep_image)
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
        """Detections plus the full decoder trace of one image.

        Returns ``(detections, trace, query_index)`` where ``query_index [N]`` is the decoder
        query each detection came from, so ``trace.boxes[:, 0, query_index]`` are the boxes of
        every layer for the returned detections.
        """
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        rgb, x = self.preprocess(image, color_order)
        trace = self.model.trace(x)
        outputs = {"pred_logits": trace.logits[-1], "pred_boxes": trace.boxes[-1]}
        det, queries = self._detections(outputs, [rgb], threshold, keep_image=True, queries=True)
        return det[0], trace, queries[0]


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
