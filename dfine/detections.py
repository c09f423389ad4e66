"""``Detections``: the result of running a detector on one image.

Numpy only (no torch), so every backend (torch, ONNX Runtime, TensorRT) returns the same
object. Boxes are ``xyxy`` in the pixels of the original image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from dfine import draw as drawing
from dfine.errors import InvalidArgumentError, missing
from dfine.files import atomic_write
from dfine.io import ImageSource, load_image

if TYPE_CHECKING:
    import pandas as pd
    import supervision as sv

__all__ = ["PALETTE", "Detections"]

# Kelly's 22 colours of maximum contrast without white and black: 20 visually distinct
# colours, indexed by ``label % 20``.
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    for h in (
        "F3C300", "875692", "F38400", "A1CAF1", "BE0032", "C2B280", "848482", "008856",
        "E68FAC", "0067A5", "F99379", "604E97", "F6A600", "B3446C", "DCD300", "882D17",
        "8DB600", "654522", "E25822", "2B3D26",
    )
)  # fmt: skip

_SPEED_ORDER = ("preprocess", "inference", "postprocess")

Color = drawing.Color
Index = int | slice | np.ndarray | Sequence[int] | Sequence[bool]


@dataclass(eq=False)
class Detections:
    """Detections of one image, sorted by descending score.

    Attributes:
        boxes: ``[N, 4]`` float32, ``x1, y1, x2, y2`` in original-image pixels.
        scores: ``[N]`` float32, descending.
        labels: ``[N]`` int64, contiguous class index (``class_names[label]``).
        class_names: name of every class index of the model.
        image_size: ``(width, height)`` of the original image.
        speed: milliseconds per stage: ``'preprocess'``, ``'inference'``, ``'postprocess'``.
        image: the original image, ``[H, W, 3]`` uint8 RGB, used by ``plot()`` when it is not
            given an image; ``None`` when not kept.
        track_id: ``[N]`` int64 track id of every detection of a tracked video frame (``-1``
            for a detection no track holds); ``None`` for still images and untracked video.
        frame_index: index of the video frame in its source (0-based); ``None`` for images.
        time_s: presentation time of the video frame in seconds; ``None`` for images.
        source: the image file or video the detections came from (``None`` for arrays,
            bytes and PIL images).

    Views (new arrays in the Ultralytics spelling; numpy, like the storage):
    :attr:`xyxy` ``[N, 4]`` (= ``boxes``), :attr:`xywh` ``[N, 4]`` centre x, centre y, width,
    height in pixels, :attr:`xyxyn` ``[N, 4]`` ``xyxy`` divided by the image's width and height,
    :attr:`conf` ``[N]`` (= ``scores``), :attr:`cls` ``[N]`` (= ``labels``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    speed: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None
    track_id: np.ndarray | None = None
    frame_index: int | None = None
    time_s: float | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        if self.boxes.size == 0:
            self.boxes = self.boxes.reshape(0, 4)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise InvalidArgumentError(f"boxes must have shape [N, 4], got {self.boxes.shape}")
        n = self.boxes.shape[0]
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.scores.shape != (n,):
            raise InvalidArgumentError(
                f"scores must have shape [N] = [{n}], got {self.scores.shape}"
            )
        self.labels = _as_labels(self.labels, n)
        self.class_names = tuple(str(c) for c in self.class_names)
        self.image_size = _as_size(self.image_size)
        self.speed = {str(k): float(v) for k, v in self.speed.items()}
        if self.image is not None:
            self.image = _check_image(self.image, self.image_size)
        if self.track_id is not None:
            self.track_id = _as_labels(self.track_id, n)
        if self.frame_index is not None:
            self.frame_index = int(self.frame_index)
        if self.time_s is not None:
            self.time_s = float(self.time_s)
        if self.source is not None:
            self.source = str(self.source)

    # ------------------------------------------------------------------ container protocol

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Index) -> Detections:
        """Select detections by int, slice, boolean mask ``[N]`` or index array."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} detections")
            index = np.asarray([int(index)])
        elif not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == np.bool_ and index.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape [{len(self)}], got {index.shape}")
            if index.size == 0:
                index = index.astype(np.int64)
        return Detections(
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            class_names=self.class_names,
            image_size=self.image_size,
            speed=dict(self.speed),
            image=self.image,
            track_id=None if self.track_id is None else self.track_id[index],
            frame_index=self.frame_index,
            time_s=self.time_s,
            source=self.source,
        )

    def __repr__(self) -> str:
        return f"Detections({self.summary()})"

    # ------------------------------------------------------------------ views

    @property
    def xyxy(self) -> np.ndarray:
        """``[N, 4]`` float32 ``x1, y1, x2, y2`` in pixels (a copy of ``boxes``)."""
        return self.boxes.copy()

    @property
    def xywh(self) -> np.ndarray:
        """``[N, 4]`` float32 centre x, centre y, width, height in pixels."""
        xy = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2
        return np.concatenate([xy, self.boxes[:, 2:] - self.boxes[:, :2]], axis=1)

    @property
    def xyxyn(self) -> np.ndarray:
        """``[N, 4]`` float32 ``x1, y1, x2, y2`` divided by the image width and height."""
        width, height = self.image_size
        return self.boxes / np.asarray([width, height, width, height], dtype=np.float32)

    @property
    def conf(self) -> np.ndarray:
        """``[N]`` float32 scores (a copy of ``scores``)."""
        return self.scores.copy()

    @property
    def cls(self) -> np.ndarray:
        """``[N]`` int64 class indices (a copy of ``labels``)."""
        return self.labels.copy()

    @property
    def names(self) -> list[str]:
        """Class name of every detection; ``"class {i}"`` for an index without a name."""
        return [self._name(int(label)) for label in self.labels]

    def _name(self, label: int) -> str:
        if 0 <= label < len(self.class_names):
            return self.class_names[label]
        return f"class {label}"

    def filter(self, min_score: float) -> Detections:
        """The detections whose score is at least ``min_score``."""
        return self[self.scores >= min_score]

    # ------------------------------------------------------------------ export

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: image size, speed (ms) and one entry per detection; for a video
        frame also ``frame_index`` and ``time_s``, and ``track_id`` per detection when
        tracked."""
        width, height = self.image_size
        record: dict[str, Any] = {"image_size": {"width": width, "height": height}}
        if self.frame_index is not None:
            record["frame_index"] = self.frame_index
        if self.time_s is not None:
            record["time_s"] = round(self.time_s, 4)
        record["speed"] = {k: round(v, 2) for k, v in self.speed.items()}
        record["detections"] = [
            {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 4),
                "label": int(label),
                "name": name,
            }
            for box, score, label, name in zip(self.boxes, self.scores, self.labels, self.names)
        ]
        if self.track_id is not None:
            for entry, tid in zip(record["detections"], self.track_id):
                entry["track_id"] = int(tid)
        return record

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 2) -> str:
        """``to_dict()`` as a JSON string; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_coco(
        self, image_id: int, category_ids: Sequence[int] | None = None
    ) -> list[dict[str, Any]]:
        """Detections in the COCO results format.

        Args:
            image_id: the COCO ``image_id``.
            category_ids: category id of every class index (e.g. ``dfine.coco.COCO_CATEGORY_IDS``);
                when ``None`` the label itself is the category id.

        Returns:
            ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
        """
        categories = self.labels
        if category_ids is not None:
            lookup = np.asarray(category_ids, dtype=np.int64)
            if len(self) and (self.labels.min() < 0 or self.labels.max() >= len(lookup)):
                raise InvalidArgumentError(
                    f"labels lie in {self.labels.min()}..{self.labels.max()} but category_ids "
                    f"has {len(lookup)} entries"
                )
            categories = lookup[self.labels]
        xywh = self.boxes.astype(np.float64)
        xywh[:, 2:] -= xywh[:, :2]
        return [
            {
                "image_id": int(image_id),
                "category_id": int(category),
                "bbox": [float(v) for v in box],
                "score": float(score),
            }
            for box, score, category in zip(xywh, self.scores, categories)
        ]

    def to_pandas(self) -> pd.DataFrame:
        """One row per detection: ``x1, y1, x2, y2`` (pixels), ``score``, ``label``,
        ``name``."""
        import pandas as pd

        frame = pd.DataFrame(self.boxes.astype(np.float64), columns=["x1", "y1", "x2", "y2"])
        frame["score"] = self.scores.astype(np.float64)
        frame["label"] = self.labels.astype(np.int64)
        frame["name"] = self.names
        return frame

    def to_supervision(self) -> sv.Detections:
        """The detections as ``supervision.Detections`` (``xyxy``, ``confidence``,
        ``class_id`` and ``data["class_name"]``), for its annotators and trackers."""
        try:
            import supervision as sv
        except ImportError as e:
            raise missing("Detections.to_supervision()", "supervision") from e
        return sv.Detections(
            xyxy=self.boxes.astype(np.float32),
            confidence=self.scores.astype(np.float32),
            class_id=self.labels.astype(int),
            data={"class_name": np.array(self.names, dtype=object)},
        )

    def save_crops(
        self, folder: str | os.PathLike, image: ImageSource | None = None, suffix: str = ".jpg"
    ) -> list[Path]:
        """Write each detection's box, cut from the image (default: the kept original), as
        ``folder/<index>_<name>.<suffix>``; returns the paths in detection order. Boxes are
        rounded outward to whole pixels and clipped to the image; each file is written
        atomically."""
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(suffix.lower())
        if fmt is None:
            raise InvalidArgumentError(f"crops are saved as .jpg, .png or .webp, not {suffix!r}")
        array = self._plot_base(image)
        height, width = array.shape[:2]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (box, name) in enumerate(zip(self.boxes, self.names)):
            x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
            x2, y2 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
            crop = Image.fromarray(array[y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)])
            safe = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "object"
            path = folder / f"{i:03d}_{safe}{suffix}"
            atomic_write(path, lambda tmp, c=crop: c.save(tmp, format=fmt))
            paths.append(path)
        return paths

    def summary(self) -> str:
        """One line, e.g. ``"640x480: 2 persons, 1 cup; 11.2ms preprocess, 180.4ms inference"``.

        The size is ``width x height``; classes are listed in class-index order.
        """
        width, height = self.image_size
        text = f"{width}x{height}: "
        if len(self) == 0:
            text += "no detections"
        else:
            uniq, counts = np.unique(self.labels, return_counts=True)
            text += ", ".join(
                f"{c} {self._name(int(u))}{'' if c == 1 else 's'}" for u, c in zip(uniq, counts)
            )
        keys = [k for k in _SPEED_ORDER if k in self.speed]
        keys += [k for k in self.speed if k not in _SPEED_ORDER]
        if keys:
            text += "; " + ", ".join(f"{self.speed[k]:.1f}ms {k}" for k in keys)
        return text

    # ------------------------------------------------------------------ drawing

    def plot(
        self,
        image: ImageSource | None = None,
        *,
        line_width: int | None = None,
        font_size: int | None = None,
        show_scores: bool = True,
        colors: Sequence[Color] | None = None,
    ) -> Image.Image:
        """Draw the boxes and ``"name 0.87"`` labels (``"#3 name 0.87"`` with a track id) on a
        copy of the image.

        Args:
            image: the original image (anything ``dfine.io.load_image`` takes; arrays are
                RGB), of size ``image_size``. Defaults to ``self.image``. Never modified.
            line_width: box outline width in pixels; default scales with the image size.
            font_size: label font size in pixels; default scales with the image size.
            show_scores: append the score to the class name.
            colors: colours indexed by ``label % len(colors)`` (RGB tuples or names/hex
                strings PIL understands); default ``PALETTE``.

        Returns:
            An RGB ``PIL.Image.Image`` of size ``image_size``.
        """
        canvas = Image.fromarray(self._plot_base(image))
        draw = ImageDraw.Draw(canvas)
        lw, fs = drawing.sizes_for(*canvas.size)
        lw = line_width or lw
        font = drawing.font(font_size or fs)
        palette = list(colors) if colors else list(PALETTE)
        placed: list[tuple[float, float, float, float]] = []
        tracks = self.track_id if self.track_id is not None else [-1] * len(self)
        boxes = self.boxes.tolist()
        items = list(zip(boxes, self.scores, self.labels, self.names, tracks))
        for box, _, label, _, _ in items:  # every outline first, then the labels over them
            drawing.outline(draw, box, drawing.rgb(palette[int(label) % len(palette)]), lw)
        for box, score, label, name, track in items:  # highest scores first: best spots
            color = drawing.rgb(palette[int(label) % len(palette)])
            tag = f"#{track} {name}" if track >= 0 else name
            texts = [f"{tag} {score:.2f}", tag] if show_scores else [tag]
            drawing.label(draw, box, color, lw, texts, font, placed, boxes)
        return canvas

    def _plot_base(self, image: ImageSource | None) -> np.ndarray:
        """``[H, W, 3]`` uint8 copy of the image to draw on."""
        if image is None:
            if self.image is None:
                raise InvalidArgumentError(
                    "Detections.plot() needs an image: pass one, or keep the original image "
                    "in the Detections (image=...)"
                )
            return self.image.copy()
        array = load_image(image)
        height, width = array.shape[:2]
        if (width, height) != self.image_size:
            raise InvalidArgumentError(
                f"plot() image is {width}x{height} but the detections are for a "
                f"{self.image_size[0]}x{self.image_size[1]} image"
            )
        return array


def _as_labels(labels: Any, n: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.size == 0:
        array = array.reshape(0)
    if array.shape != (n,):
        raise InvalidArgumentError(f"labels must have shape [N] = [{n}], got {array.shape}")
    is_int = np.issubdtype(array.dtype, np.integer)
    if not is_int and not np.all(np.equal(np.mod(array, 1), 0)):
        raise InvalidArgumentError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _as_size(size: Any) -> tuple[int, int]:
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) <= 0:
        raise InvalidArgumentError(
            f"image_size must be (width, height) of positive ints, got {size}"
        )
    return size  # type: ignore[return-value]


def _check_image(image: Any, size: tuple[int, int]) -> np.ndarray:
    image = np.asarray(image)
    expected = (size[1], size[0], 3)
    if image.shape != expected or image.dtype != np.uint8:
        raise InvalidArgumentError(
            f"image must be uint8 with shape [H, W, 3] = {list(expected)} (image_size is "
            f"width x height), got {image.dtype} {list(image.shape)}"
        )
    return image
