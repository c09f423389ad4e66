"""Uploaded dataset archives, opened safely: a zip is checked entry by entry before anything is
written, extracted only into the caller's temporary folder, and found to hold either a COCO
dataset (images + ``instances_*.json``) or a YOLO one (``images/`` + ``labels/`` + class
names). Every problem is one :class:`~app.errors.UserError` that says what and what to do.
"""

from __future__ import annotations

import json
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.errors import UserError
from dfine.data.yolo import YoloDetection

MAX_FILES = 2000
MAX_TOTAL_BYTES = 300 * 2**20
MAX_FILE_BYTES = 50 * 2**20
MAX_RATIO = 100
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LIMITS_TEXT = (
    f"at most {MAX_FILES} files, {MAX_TOTAL_BYTES // 2**20} MB uncompressed in all, "
    f"{MAX_FILE_BYTES // 2**20} MB per file and {MAX_RATIO}:1 compression per file; "
    "UTF-8 file names, no links, no absolute paths or '..'"
)


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset found in an extracted archive: ``annotations`` (a COCO json, written here for
    a YOLO dataset) and the ``images`` folder its ``file_name`` entries are relative to."""

    annotations: Path
    images: Path
    layout: str  # "coco" or "yolo"


def _check_entry(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The entry's safe relative path (None for a directory), or a UserError."""
    name = info.filename
    if not info.flag_bits & 0x800 and not name.isascii():
        raise UserError(
            f"the zip has a file name that is not UTF-8 ({name!r} as read): re-create the zip "
            "with UTF-8 names (e.g. 'zip' on Linux/macOS, or 7-Zip)"
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UserError(f"the zip holds a symbolic link ({name}): links are not accepted")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"the zip holds an absolute path ({name}): use relative paths")
    path = PurePosixPath(name.replace("\\", "/"))
    if ".." in path.parts:
        raise UserError(f"the zip holds a path that leaves its folder ({name}): remove '..'")
    if info.is_dir():
        return None
    if info.file_size > MAX_FILE_BYTES:
        raise UserError(
            f"{name} is {info.file_size / 2**20:.0f} MB uncompressed; the limit per file is "
            f"{MAX_FILE_BYTES // 2**20} MB"
        )
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
        raise UserError(
            f"{name} expands {info.file_size / info.compress_size:.0f}:1 (a zip bomb?); the "
            f"limit is {MAX_RATIO}:1"
        )
    return path


def extract_zip(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract ``archive`` into the existing folder ``dest`` after checking every entry
    against the limits (:data:`LIMITS_TEXT`); returns the files written."""
    dest = Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except UnicodeDecodeError:
        raise UserError("the zip's file names are not valid UTF-8: re-create it") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"the upload is not a readable zip archive ({e})") from None
    with zf:
        files = [(info, _check_entry(info)) for info in zf.infolist()]
        files = [(i, p) for i, p in files if p is not None]
        if len(files) > MAX_FILES:
            raise UserError(f"the zip holds {len(files)} files; the limit is {MAX_FILES}")
        total = sum(i.file_size for i, _ in files)
        if total > MAX_TOTAL_BYTES:
            raise UserError(
                f"the zip expands to {total / 2**20:.0f} MB; the limit is "
                f"{MAX_TOTAL_BYTES // 2**20} MB"
            )
        written, budget = [], MAX_TOTAL_BYTES
        for info, rel in files:
            target = dest.joinpath(*rel.parts)
            if dest not in target.resolve().parents:
                raise UserError(f"the zip holds a path that leaves its folder ({info.filename})")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                size = 0
                while block := src.read(1 << 20):
                    size += len(block)
                    budget -= len(block)
                    if size > info.file_size or budget < 0:  # the header lied
                        raise UserError(
                            f"{info.filename} is larger than the zip says (a zip bomb?)"
                        )
                    out.write(block)
            written.append(target)
    return written


def _images_root(root: Path, ann: Path, file_names: list[str]) -> Path:
    """The folder the json's ``file_name`` entries are relative to: of the json's folder, its
    parent, the root and every folder below, the one holding most of the first images."""
    sample = file_names[:20]
    candidates = [ann.parent, ann.parent.parent, root]
    candidates += sorted(p for p in root.rglob("*") if p.is_dir())
    hits = [sum((folder / n).is_file() for n in sample) for folder in candidates]
    best = max(range(len(candidates)), key=lambda i: hits[i])
    if hits[best] == 0:
        raise UserError(
            f"{ann.name} does not match the images: none of the images it lists (first: "
            f"{sample[0]!r}) is in the zip"
        )
    return candidates[best]


def _coco(root: Path, jsons: list[Path]) -> DatasetFiles:
    named = [p for p in jsons if p.name.startswith("instances_")] or jsons
    if len(named) > 1:
        val = [p for p in named if "val" in p.name]
        named = val if len(val) == 1 else named
    if len(named) > 1:
        listed = ", ".join(p.name for p in named[:5])
        raise UserError(f"the zip holds several annotation files ({listed}); keep one")
    ann = named[0]
    try:
        coco = json.loads(ann.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{ann.name} is not valid JSON ({e})") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise UserError(f"{ann.name} is not a COCO annotation file (no 'images' list)")
    names = [str(im.get("file_name", "")) for im in coco["images"] if isinstance(im, dict)]
    if not names:
        raise UserError(f"{ann.name} lists no images: the dataset is empty")
    folder = _images_root(root, ann, names)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"{ann.name} does not match the images: {len(missing)} of {len(names)} images it "
            f"lists are not in the zip (first: {', '.join(missing[:3])})"
        )
    return DatasetFiles(ann, folder, "coco")


def _yolo(root: Path, label_dirs: list[Path]) -> DatasetFiles:
    labels = label_dirs[0]
    images = labels.parent / "images"
    if not images.is_dir():
        raise UserError(f"YOLO layout: found {labels.name}/ but no images/ folder next to it")
    names = next(
        (p for n in ("data.yaml", "dataset.yaml", "classes.txt", "names.txt")
         for p in (labels.parent / n, root / n) if p.is_file()),
        None,
    )  # fmt: skip
    if names is None:
        raise UserError("YOLO layout needs the class names: data.yaml (names:) or classes.txt")
    ds = YoloDetection(images, labels, names=names)
    if len(ds) == 0:
        raise UserError("the YOLO dataset has no images: the dataset is empty")
    coco = ds.to_coco_dict()
    ann = root / "instances_val.json"
    ann.write_text(json.dumps(coco), encoding="utf-8")
    return DatasetFiles(ann, images, "yolo")


def find_dataset(root: str | Path) -> DatasetFiles:
    """The COCO or YOLO dataset in the extracted folder ``root``."""
    root = Path(root)
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*") if p.is_file()):
        raise UserError("the zip holds no images (.jpg, .png, ...): the dataset is empty")
    jsons = sorted(p for p in root.rglob("*.json") if p.is_file())
    if jsons:
        return _coco(root, jsons)
    label_dirs = sorted(p for p in root.rglob("labels") if p.is_dir())
    if label_dirs:
        return _yolo(root, label_dirs)
    raise UserError(
        "no annotations in the zip: add a COCO instances_*.json next to the images, or use "
        "the YOLO layout (images/, labels/ and data.yaml)"
    )
