"""COCO-format detection datasets, validated when they are loaded.

The annotation file is read with the standard library's ``json`` (the raw records are
needed for validation); ``CocoDetection.coco`` gives a pycocotools-compatible ``COCO``
object of the validated file for evaluation.

Every problem is caught here, never as a device-side assert later: a file that is not JSON
or lacks ``images`` / ``annotations`` / ``categories`` raises ``DatasetError``; per record,
an annotation of an unknown image or category, a malformed / non-finite box, a box of
non-positive size or lying outside its image (by more than ``box_tolerance`` pixels;
smaller overshoot is clipped), a label outside ``num_classes``, an image entry without a
valid id / file name / size, and (with ``check_files=True``) an image that is missing,
unreadable or of another size than recorded, raise ``DatasetError`` (``on_invalid="error"``)
or are dropped, counted per reason in ``dataset.skipped`` and summarised in one
``logging.warning`` line (``on_invalid="skip"``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dfine import coco as coco80
from dfine.data.dataset import (
    EXIF_POLICIES,
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

__all__ = ["CATEGORY_MAPPINGS", "CocoDetection", "load_coco_json"]

CATEGORY_MAPPINGS = ("contiguous", "coco80", "identity")


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read a COCO annotation file and check its top-level structure.

    Raises:
        DatasetError: missing file, not JSON, not an object, or ``images`` /
            ``annotations`` / ``categories`` missing or not lists.
    """
    path = Path(ann_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: annotation file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the annotation file ({e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a COCO file holds a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: missing the '{key}' list of a COCO detection file")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    )


class CocoDetection(DetectionDataset):
    """A COCO-format detection dataset (``torch.utils.data.Dataset``).

    Args:
        img_folder: folder the images' ``file_name`` are relative to.
        ann_file: COCO annotation json (``images``, ``annotations``, ``categories``).
        transforms: callable ``(image, target) -> (image, target)``, e.g.
            ``dfine.data.build_train_transforms()``; ``None`` returns the raw item.
        category_mapping: how category ids become labels.
            ``"contiguous"`` (default): the file's category ids, sorted, become
            ``0..K-1`` (any custom file). ``"coco80"``: the 80 COCO ids (1..90 with gaps)
            become ``0..79`` (the reference's ``remap_mscoco_category=True``).
            ``"identity"``: label = category id (the reference's default).
        num_classes: number of classes of the model. Defaults to K (contiguous), 80
            (coco80) or the largest category id + 1 (identity). Labels outside
            ``0..num_classes-1`` are invalid.
        on_invalid: ``"skip"`` (drop, count, warn) or ``"error"`` (raise ``DatasetError``).
        check_files: check now that every image exists, is readable and has the recorded
            size (reads each header); otherwise a missing image raises ``DatasetError``
            when its item is loaded.
        box_tolerance: pixels a box may extend past the image before it is invalid;
            smaller overshoot is clipped.
        exif: ``"auto"`` / ``"apply"`` / ``"ignore"`` the EXIF orientation tag, see
            ``dfine.data.dataset.read_image``.
        max_pixels: largest image decoded (``dfine.io.load_image``).

    Items are ``(image, target)``, see ``dfine.data.dataset``; images are in order of
    increasing image id (as ``torchvision.datasets.CocoDetection``). Crowd annotations
    (``iscrowd=1``) are not training targets but stay in ``coco`` for evaluation.
    Attributes: ``num_classes``, ``class_names``, ``label_to_category``,
    ``category_to_label``, ``skipped``, ``ann_file``.
    """

    def __init__(
        self,
        img_folder: str | Path,
        ann_file: str | Path,
        transforms: Transform | None = None,
        category_mapping: str = "contiguous",
        num_classes: int | None = None,
        on_invalid: str = "skip",
        check_files: bool = False,
        box_tolerance: float = 1.0,
        exif: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(img_folder, transforms)
        if category_mapping not in CATEGORY_MAPPINGS:
            raise InvalidArgumentError(
                f"category_mapping must be one of {CATEGORY_MAPPINGS}, got {category_mapping!r}"
            )
        if exif not in EXIF_POLICIES:
            raise InvalidArgumentError(f"exif must be one of {EXIF_POLICIES}, got {exif!r}")
        if num_classes is not None and (not _is_int(num_classes) or num_classes <= 0):
            raise InvalidArgumentError(f"num_classes must be a positive int, got {num_classes!r}")
        self.ann_file = Path(ann_file)
        self.category_mapping = category_mapping
        self.exif = exif
        self.max_pixels = max_pixels
        self.box_tolerance = float(box_tolerance)
        self._coco = None

        data = load_coco_json(self.ann_file)
        problems = Problems(self.ann_file, on_invalid)
        categories = self._read_categories(data["categories"])
        self._set_classes(categories, num_classes)
        images = self._read_images(data["images"], problems)
        if check_files:
            self._check_files(images, problems)
        per_image, dropped = self._read_annotations(data["annotations"], images, problems)
        self.skipped = problems.finish()
        self._kept_image_entries = sorted(self._entry_index[i] for i in images)
        del self._entry_index
        self._dropped_annotations = dropped
        self._set_records([self._record(images[i], per_image.get(i, [])) for i in sorted(images)])

    # ------------------------------------------------------------------ categories
    def _read_categories(self, entries: list[Any]) -> dict[int, str]:
        """``{category id: name}``; a malformed or duplicate category is a file error."""
        categories: dict[int, str] = {}
        for k, cat in enumerate(entries):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise DatasetError(f"{self.ann_file}: categories[{k}] has no integer 'id'")
            if cat["id"] in categories:
                raise DatasetError(f"{self.ann_file}: category id {cat['id']} is listed twice")
            categories[cat["id"]] = str(cat.get("name", cat["id"]))
        return categories

    def _set_classes(self, categories: dict[int, str], num_classes: int | None) -> None:
        """Fill ``category_to_label``, ``num_classes``, ``class_names``, ``label_to_category``."""
        if self.category_mapping == "contiguous":
            mapping = {c: i for i, c in enumerate(sorted(categories))}
            names = {i: categories[c] for c, i in mapping.items()}
            default = len(mapping)
        elif self.category_mapping == "coco80":
            mapping = {
                c: coco80.category_to_label[c] for c in categories if c in coco80.category_to_label
            }
            names = dict(enumerate(coco80.COCO_CLASSES))
            default = len(coco80.COCO_CLASSES)
        else:
            mapping = {c: c for c in categories}
            names = {c: name for c, name in categories.items()}
            default = max(categories, default=-1) + 1
        self.num_classes = num_classes if num_classes is not None else max(default, 1)
        self.category_to_label = mapping
        self.label_to_category = {
            label: c for c, label in sorted(mapping.items()) if 0 <= label < self.num_classes
        }
        self.class_names = tuple(names.get(i, f"class_{i}") for i in range(self.num_classes))

    # ------------------------------------------------------------------ images
    def _read_images(self, entries: list[Any], problems: Problems) -> dict[int, dict]:
        """``{image id: entry}`` of the valid image entries."""
        images: dict[int, dict] = {}
        self._dropped_image_ids: set[int] = set()  # listed, but invalid or missing
        self._entry_index: dict[int, int] = {}  # image id -> index in entries
        for k, img in enumerate(entries):
            problem = self._image_problem(img, images)
            if problem:
                image_id = img.get("id") if isinstance(img, dict) else None
                if _is_int(image_id):
                    self._dropped_image_ids.add(image_id)
                where = f"image id {image_id}" if image_id is not None else f"images[{k}]"
                problems.add("invalid_image", where, problem)
                continue
            images[img["id"]] = img
            self._entry_index[img["id"]] = k
        return images

    @staticmethod
    def _image_problem(img: Any, seen: Mapping[int, Any]) -> str | None:
        if not isinstance(img, dict):
            return f"an image entry must be an object, got {type(img).__name__}"
        if not _is_int(img.get("id")):
            return f"image has no integer 'id' (got {img.get('id')!r})"
        if img["id"] in seen:
            return "image id is listed twice (the later entry is invalid)"
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            return "image has no 'file_name'"
        for key in ("width", "height"):
            value = img.get(key)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                return f"image '{img['file_name']}' has no positive '{key}' (got {value!r})"
        return None

    def _check_files(self, images: dict[int, dict], problems: Problems) -> None:
        """Drop (or fail on) images that are missing, unreadable or of another size."""
        for image_id in list(images):
            img = images[image_id]
            path = self.img_folder / img["file_name"]
            expected = (int(img["width"]), int(img["height"]))
            where = f"image id {image_id}"
            if not path.is_file():
                problems.add("missing_file", where, f"image file '{path}' not found")
            else:
                try:
                    size = image_size(path, self.exif, expected)
                except ImageLoadError as e:
                    problems.add("unreadable_image", where, str(e))
                else:
                    if tuple(size) == expected:
                        continue
                    problems.add(
                        "size_mismatch",
                        where,
                        f"'{path}' is {size[0]}x{size[1]} but the annotations say "
                        f"{expected[0]}x{expected[1]} (width x height)",
                    )
            del images[image_id]
            self._dropped_image_ids.add(image_id)

    # ------------------------------------------------------------------ annotations
    def _read_annotations(
        self, entries: list[Any], images: dict[int, dict], problems: Problems
    ) -> tuple[dict[int, list], set[int]]:
        """``{image id: [(annotation, xyxy box), ...]}`` of the valid annotations, and the
        indices of the invalid ones in ``entries``."""
        per_image: dict[int, list] = {}
        dropped: set[int] = set()
        for k, ann in enumerate(entries):
            try:
                box = self._check_annotation(ann, images)
            except Invalid as e:
                ann_id = ann.get("id") if isinstance(ann, dict) else None
                where = f"annotation id {ann_id}" if ann_id is not None else f"annotations[{k}]"
                if isinstance(ann, dict) and ann.get("image_id") in images:
                    where += f" (image id {ann['image_id']})"
                problems.add(e.reason, where, e.problem)
                dropped.add(k)
                continue
            if box is None:  # its image was dropped (and counted)
                dropped.add(k)
                continue
            per_image.setdefault(ann["image_id"], []).append((ann, box))
        return per_image, dropped

    def _check_annotation(
        self, ann: Any, images: dict[int, dict]
    ) -> tuple[float, float, float, float] | None:
        """The clipped XYXY box of a valid annotation; ``None`` for one of an image that
        was dropped. Raises ``Invalid`` for an invalid one."""
        if not isinstance(ann, dict):
            raise Invalid("invalid_annotation", f"must be an object, got {type(ann).__name__}")
        image_id = ann.get("image_id")
        if not _is_int(image_id) or image_id not in images:
            if _is_int(image_id) and image_id in self._dropped_image_ids:
                return None
            raise Invalid("unknown_image_id", f"image_id {image_id!r} is not in 'images'")
        category_id = ann.get("category_id")
        if not _is_int(category_id) or category_id not in self.category_to_label:
            raise Invalid("unknown_category_id", self._unknown_category(category_id))
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise Invalid("invalid_bbox", f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        img = images[image_id]
        x, y, w, h = bbox
        box = check_box(x, y, w, h, img["width"], img["height"], self.box_tolerance)
        label = self.category_to_label[category_id]
        if not 0 <= label < self.num_classes:
            raise Invalid(
                "label_out_of_range",
                f"category id {category_id} gives label {label}, outside "
                f"0..{self.num_classes - 1} (num_classes={self.num_classes})",
            )
        return box

    def _unknown_category(self, category_id: Any) -> str:
        if self.category_mapping == "coco80" and _is_int(category_id):
            return (
                f"category_id {category_id} is not one of the 80 COCO category ids "
                "(category_mapping='coco80'); use category_mapping='contiguous' for other data"
            )
        return f"category_id {category_id!r} is not in 'categories'"

    def _record(self, img: dict, anns: list) -> ImageRecord:
        """Training targets of one image: its valid, non-crowd annotations."""
        anns = [(a, box) for a, box in anns if not a.get("iscrowd", 0)]
        boxes = np.array([box for _, box in anns], np.float32).reshape(-1, 4)
        labels = np.array([self.category_to_label[a["category_id"]] for a, _ in anns], np.int64)
        areas = np.array([_area(a, box) for a, box in anns], np.float32)
        return ImageRecord(
            file_name=img["file_name"],
            image_id=img["id"],
            width=int(img["width"]),
            height=int(img["height"]),
            boxes=boxes,
            labels=labels,
            areas=areas,
        )

    # ------------------------------------------------------------------ evaluation
    def to_coco_dict(self) -> dict[str, Any]:
        """The annotation file without the records that were skipped (crowd annotations
        kept), read again from ``ann_file``: ground truth for COCO evaluation."""
        data = load_coco_json(self.ann_file)
        annotations = [
            a for k, a in enumerate(data["annotations"]) if k not in self._dropped_annotations
        ]
        images = [data["images"][k] for k in self._kept_image_entries]
        return {**data, "images": images, "annotations": annotations}

    @property
    def coco(self):
        """A ``COCO`` object (pycocotools API) of ``to_coco_dict()``, built on first use:
        from ``faster_coco_eval`` when it is installed, else from ``pycocotools``."""
        if self._coco is None:
            self._coco = make_coco_api(self.to_coco_dict())
        return self._coco

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers need no COCO object
        state = self.__dict__.copy()
        state["_coco"] = None
        return state

    def _source(self) -> str:
        return str(self.ann_file)


def _area(ann: dict, box: tuple[float, float, float, float]) -> float:
    area = ann.get("area")
    if _is_number(area) and math.isfinite(area) and area > 0:
        return float(area)
    return float((box[2] - box[0]) * (box[3] - box[1]))


def make_coco_api(
    data: dict[str, Any], backends: Iterable[str] = ("faster_coco_eval", "pycocotools")
):
    """A pycocotools-style ``COCO`` object indexing the COCO dict ``data`` (which it keeps
    and may modify), built without printing, from the first importable of ``backends``.

    Raises:
        ImportError: neither is installed (the message says what to install).
    """
    for name in backends:
        try:
            if name == "faster_coco_eval":
                from faster_coco_eval import COCO
            else:
                from pycocotools.coco import COCO
        except ImportError:
            continue
        api = COCO()
        api.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            api.createIndex()
        return api
    raise missing("COCO evaluation (faster-coco-eval or pycocotools)", "pycocotools")
