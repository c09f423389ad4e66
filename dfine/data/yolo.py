"""YOLO-format detection datasets (the Ultralytics / Darknet layout), validated at load time.

Layout: an image folder and a label folder with one ``.txt`` per image (same stem); the
label folder defaults to the image folder's path with its last ``images`` component
replaced by ``labels`` (``data/images/train`` -> ``data/labels/train``). Each line is
``class cx cy w h`` normalised to ``[0, 1]`` or a polygon ``class x1 y1 x2 y2 ...``
(its bounding box is used). An image without a label file has no objects.

Image sizes are read from the headers when the dataset is built (with the EXIF
orientation applied, as Ultralytics does). Problems are handled as in ``CocoDetection``
(``on_invalid="skip"|"error"``, ``dataset.skipped``): ``malformed_line``,
``non_positive_size``, ``outside_image``, ``invalid_bbox``, ``label_out_of_range``,
``unreadable_image``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfine.data.coco import make_coco_api
from dfine.data.dataset import (
    DatasetError,
    DetectionDataset,
    ImageRecord,
    Invalid,
    Problems,
    Transform,
    check_box,
    image_size,
)
from dfine.errors import InvalidArgumentError, missing
from dfine.io import DEFAULT_MAX_PIXELS, ImageLoadError

__all__ = ["IMAGE_SUFFIXES", "YoloDetection", "read_names"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError as e:
        raise missing("reading a YOLO data.yaml", "pyyaml") from e
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file not found") from e
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML ({e})") from e


def read_names(names: Sequence[str] | Mapping[int, str] | str | Path) -> tuple[str, ...]:
    """Class names from a list, a ``{index: name}`` mapping (indices ``0..K-1``), a
    ``data.yaml`` (its ``names``) or a text file with one name per line."""
    if isinstance(names, (str, Path)):
        path = Path(names)
        if path.suffix.lower() in (".yaml", ".yml"):
            data = _load_yaml(path)
            if not isinstance(data, dict) or "names" not in data:
                raise DatasetError(f"{path}: no 'names' in the YAML file")
            return read_names(data["names"])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DatasetError(f"{path}: cannot read the class names ({e})") from e
        return tuple(line.strip() for line in lines if line.strip())
    if isinstance(names, Mapping):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise DatasetError(f"class name indices must be 0..{len(keys) - 1}, got {keys}")
        return tuple(str(names[k]) for k in keys)
    return tuple(str(n) for n in names)


def _default_label_dir(img_dir: Path) -> Path:
    parts = list(img_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    raise DatasetError(
        f"{img_dir}: no 'images' folder in the path to replace by 'labels'; pass label_dir"
    )


class YoloDetection(DetectionDataset):
    """A YOLO-format detection dataset; items as ``CocoDetection``'s.

    Args:
        img_folder: folder of images (not searched recursively).
        label_dir: folder of ``.txt`` label files; default: see the module docstring.
        names: class names (list, mapping, ``data.yaml`` or names file); ``None`` needs
            ``num_classes`` and names the classes ``class_0`` ....
        num_classes: defaults to ``len(names)``.
        on_invalid: ``"skip"`` or ``"error"``.
        box_tolerance: pixels a box may extend past the image before it is invalid.

    Labels are the YOLO class indices; ``label_to_category`` maps label ``i`` to COCO
    category id ``i + 1`` (that of ``to_coco_dict``). Image ids are ``1..N`` in file-name
    order.
    """

    def __init__(
        self,
        img_folder: str | Path,
        label_dir: str | Path | None = None,
        names: Sequence[str] | Mapping[int, str] | str | Path | None = None,
        transforms: Transform | None = None,
        num_classes: int | None = None,
        on_invalid: str = "skip",
        box_tolerance: float = 1.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(img_folder, transforms)
        if not self.img_folder.is_dir():
            raise DatasetError(f"{self.img_folder}: image folder not found")
        self.label_dir = (
            Path(label_dir) if label_dir is not None else _default_label_dir(self.img_folder)
        )
        self.exif = "apply"
        self.max_pixels = max_pixels
        self.box_tolerance = float(box_tolerance)
        class_names = read_names(names) if names is not None else None
        if num_classes is None:
            if class_names is None:
                raise InvalidArgumentError("YoloDetection needs names or num_classes")
            num_classes = len(class_names)
        if num_classes <= 0:
            raise InvalidArgumentError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        class_names = class_names or ()
        self.class_names = tuple(
            class_names[i] if i < len(class_names) else f"class_{i}"
            for i in range(self.num_classes)
        )
        self.label_to_category = {i: i + 1 for i in range(self.num_classes)}

        problems = Problems(self.label_dir, on_invalid)
        files = sorted(
            p.name for p in self.img_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        records = []
        for image_id, name in enumerate(files, start=1):
            record = self._read(name, image_id, problems)
            if record is not None:
                records.append(record)
        self.skipped = problems.finish()
        self._set_records(records)

    @classmethod
    def from_yaml(cls, data_yaml: str | Path, split: str = "train", **kwargs: Any) -> YoloDetection:
        """The ``split`` (``train``, ``val``, ``test``) of an Ultralytics ``data.yaml``
        (``path``, ``train: images/train``, ``names``); the split must be a folder."""
        path = Path(data_yaml)
        data = _load_yaml(path)
        if not isinstance(data, dict) or split not in data or "names" not in data:
            raise DatasetError(f"{path}: needs '{split}' and 'names' entries")
        root = Path(data.get("path") or path.parent)
        if not root.is_absolute():
            root = path.parent / root
        img_dir = root / str(data[split])
        if not img_dir.is_dir():
            raise DatasetError(f"{path}: '{split}' must be a folder of images, '{img_dir}' is not")
        return cls(img_dir, names=data["names"], **kwargs)

    # ------------------------------------------------------------------ parsing
    def _read(self, name: str, image_id: int, problems: Problems) -> ImageRecord | None:
        """The record of one image, or ``None`` when the image cannot be read."""
        try:
            width, height = image_size(self.img_folder / name, exif="apply")
        except ImageLoadError as e:
            problems.add("unreadable_image", f"image '{name}'", str(e))
            return None
        label_file = self.label_dir / (Path(name).stem + ".txt")
        boxes, labels = [], []
        if label_file.is_file():
            try:
                lines = label_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DatasetError(f"{label_file}: cannot read ({e})") from e
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    label, box = self._parse(line, width, height)
                except Invalid as e:
                    problems.add(e.reason, f"'{label_file.name}' line {n}", e.problem)
                    continue
                boxes.append(box)
                labels.append(label)
        boxes_arr = np.array(boxes, np.float32).reshape(-1, 4)
        areas = (boxes_arr[:, 2] - boxes_arr[:, 0]) * (boxes_arr[:, 3] - boxes_arr[:, 1])
        return ImageRecord(
            name, image_id, width, height, boxes_arr, np.array(labels, np.int64), areas
        )

    def _parse(self, line: str, width: int, height: int) -> tuple[int, tuple[float, ...]]:
        """``(label, xyxy box)`` of one line; raises ``Invalid``."""
        fields = line.split()
        try:
            cls_value = float(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise Invalid("malformed_line", f"not numbers: {line.strip()!r}") from None
        if not cls_value.is_integer():
            raise Invalid("malformed_line", f"class {fields[0]!r} is not an integer")
        if len(values) == 4:
            cx, cy, w, h = values
            x, y = cx - w / 2, cy - h / 2
        elif len(values) >= 6 and len(values) % 2 == 0:  # polygon
            if not all(math.isfinite(v) for v in values):
                raise Invalid("invalid_bbox", f"non-finite coordinates: {line.strip()!r}")
            xs, ys = values[0::2], values[1::2]
            x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
        else:
            raise Invalid(
                "malformed_line",
                f"expected 'class cx cy w h' or a polygon, got {len(fields)} fields",
            )
        box = check_box(
            x * width, y * height, w * width, h * height, width, height, self.box_tolerance
        )
        label = int(cls_value)
        if not 0 <= label < self.num_classes:
            raise Invalid(
                "label_out_of_range",
                f"class {label} outside 0..{self.num_classes - 1} (num_classes={self.num_classes})",
            )
        return label, box

    # ------------------------------------------------------------------ evaluation
    def to_coco_dict(self) -> dict[str, Any]:
        """The dataset as a COCO dict (category id = label + 1), for COCO evaluation."""
        images, annotations = [], []
        for index in range(len(self)):
            width, height = (int(v) for v in self._sizes[index])
            image_id = int(self._image_ids[index])
            images.append(
                {
                    "id": image_id,
                    "file_name": str(self._files[index]),
                    "width": width,
                    "height": height,
                }
            )
            lo, hi = int(self._offsets[index]), int(self._offsets[index + 1])
            for box, label in zip(self._boxes[lo:hi].tolist(), self._labels[lo:hi].tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    @property
    def coco(self):
        """A pycocotools-style ``COCO`` object of ``to_coco_dict()``."""
        if getattr(self, "_coco", None) is None:
            self._coco = make_coco_api(self.to_coco_dict())
        return self._coco

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_coco"] = None
        return state

    def _source(self) -> str:
        return str(self.label_dir)
