"""What :meth:`dfine.Detector.stream` reads: any source, as a lazy sequence of frames.

:func:`open_frames` turns an image (path, bytes, file object, PIL image, numpy array), a list
of them, a folder of images, a glob pattern (``"photos/*.jpg"``), a video file, an open
:class:`~dfine.video.FrameReader` or any iterable of frames (numpy arrays or
:class:`~dfine.video.Frame` s, e.g. a webcam) into :class:`FrameSource`: an iterator of
:class:`Item` s that decodes nothing ahead of its consumer (image files are decoded by
:meth:`Item.load`, video frames by the reader's worker thread, at most ``prefetch`` ahead), and
the frame rate a tracker needs. It is a context manager: what it opened (a video capture) is
closed when it ends, on every path.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dfine.errors import InputFileError, InvalidArgumentError
from dfine.io import DEFAULT_MAX_PIXELS, ImageSource, load_image
from dfine.video import FOLDER_FPS, IMAGE_SUFFIXES, MAX_PIXELS, Frame, FrameReader, is_video

__all__ = ["FrameSource", "Item", "is_many", "open_frames"]

_GLOB_CHARS = frozenset("*?[")
_SINGLE = (bytes, bytearray, memoryview, Image.Image, np.ndarray)


@dataclass(frozen=True)
class Item:
    """One frame of a source, not decoded yet for image files.

    ``index``: position in the source (the frame number of a video); ``time_s``: a video
    frame's presentation time (``None`` for images); ``source``: the image file's path or the
    video's, when there is one.
    """

    index: int
    data: ImageSource
    time_s: float | None = None
    source: str | None = None

    def load(self, color_order: str = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """The frame as ``[H, W, 3]`` uint8 RGB (decoded now for an image file)."""
        return load_image(self.data, color_order=color_order, max_pixels=max_pixels)


class FrameSource:
    """Iterate for :class:`Item` s; ``fps`` is the rate of the kept frames (the video's
    ``fps / stride``; :data:`dfine.video.FOLDER_FPS` for images), ``reader`` the video's
    :class:`FrameReader` (``None`` for images). Close it (or use ``with``) when done."""

    def __init__(
        self, items: Iterator[Item], fps: float, reader: FrameReader | None, owned: bool
    ) -> None:
        self._items = items
        self.fps = float(fps)
        self.reader = reader
        self._owned = owned

    def __iter__(self) -> Iterator[Item]:
        return self._items

    def close(self) -> None:
        """Close the video this source opened (a reader it was given stays its owner's)."""
        if self.reader is not None and self._owned:
            self.reader.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_many(source: Any) -> bool:
    """Whether ``source`` names several frames (a list, a folder, a glob, a video, a reader,
    an iterable of frames) rather than one image."""
    if isinstance(source, _SINGLE) or hasattr(source, "read"):
        return False
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        return path.is_dir() or is_video(path) or _is_glob(source)
    return isinstance(source, Iterable)


def open_frames(
    source: Any,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    max_pixels: int = MAX_PIXELS,
    fps: float | None = None,
    as_video: bool = False,
) -> FrameSource:
    """Open ``source`` (see the module docstring): every ``stride``-th frame, at most
    ``max_frames`` of them. A video is opened and checked now, so a bad one fails here.
    ``as_video``: a path is a video even when it is a folder (of equal-sized frames, read by
    :class:`FrameReader` at ``fps``, default :data:`dfine.video.FOLDER_FPS`).

    Raises:
        InputFileError: a path or folder that does not exist, a glob that matches nothing.
        InvalidArgumentError: a bad ``stride`` or ``max_frames``, a folder without images.
        dfine.video.VideoError: a video that cannot be read.
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InvalidArgumentError(f"stride must be a positive integer, got {stride!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or max_frames < 1):
        raise InvalidArgumentError(
            f"max_frames must be a positive integer or None, got {max_frames!r}"
        )
    if isinstance(source, FrameReader):
        return _video(source, owned=False, fps=fps, stride=source.stride)
    if isinstance(source, (str, os.PathLike)) and (as_video or is_video(source)):
        reader = FrameReader(
            source,
            stride=stride,
            max_frames=max_frames,
            max_pixels=max_pixels,
            folder_fps=fps or FOLDER_FPS,
            start=False,
        )
        return _video(reader, owned=True, fps=fps, stride=stride)
    items = _cut(_image_items(source, max_pixels), stride, max_frames)
    return FrameSource(items, (fps or FOLDER_FPS) / stride, None, owned=False)


def _video(reader: FrameReader, owned: bool, fps: float | None, stride: int) -> FrameSource:
    source = str(reader.path)
    items = (Item(f.index, f.rgb, f.time_s, source) for f in reader)
    return FrameSource(items, (fps or reader.info.fps) / stride, reader, owned)


def _cut(items: Iterator[Item], stride: int, max_frames: int | None) -> Iterator[Item]:
    return itertools.islice(itertools.islice(items, 0, None, stride), max_frames)


def _is_glob(source: str | os.PathLike) -> bool:
    text = os.fspath(source)
    return bool(_GLOB_CHARS & set(text)) and not Path(text).expanduser().exists()


def _image_items(source: Any, max_pixels: int) -> Iterator[Item]:
    """Items of an image, a list, a folder, a glob or an iterable of frames (lazy)."""
    if isinstance(source, _SINGLE) or hasattr(source, "read"):
        return iter([Item(0, source)])
    if isinstance(source, (str, os.PathLike)):
        return _path_items(source)
    if isinstance(source, Iterable):
        return (_item(i, x) for i, x in enumerate(source))
    raise TypeError(
        "a source is an image (path, bytes, file object, PIL image, numpy array), a list of "
        f"them, a folder, a glob, a video or an iterable of frames; got {type(source).__name__}"
    )


def _item(index: int, x: Any) -> Item:
    if isinstance(x, Frame):
        return Item(x.index, x.rgb, x.time_s)
    if isinstance(x, (str, os.PathLike)):
        return Item(index, x, source=os.fspath(x))
    return Item(index, x)


def _path_items(source: str | os.PathLike) -> Iterator[Item]:
    path = Path(source).expanduser()
    if _is_glob(source):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(os.fspath(source))))
        files = [p for p in files if p.is_file()]
        if not files:
            raise InputFileError(f"no files match {os.fspath(source)!r}; check the pattern")
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            suffixes = " ".join(sorted(IMAGE_SUFFIXES))
            raise InvalidArgumentError(f"no images ({suffixes}) in the folder {path}")
    else:
        files = [path]  # a missing file fails when it is decoded, with the image's message
    return iter([Item(i, p, source=str(p)) for i, p in enumerate(files)])
