"""Video in, per-frame ``Detections`` out: decoding, tracking and encoding.

* :class:`FrameReader` decodes a video file (mp4, mov, webm, avi, mkv, ... anything the
  FFmpeg inside ``opencv-python`` reads) or a folder of frames in a worker thread, so decoding
  overlaps the model. Rotation metadata of phone videos is applied
  (``CAP_PROP_ORIENTATION_AUTO``); each frame's time is its presentation timestamp
  (``CAP_PROP_POS_MSEC``), so variable-frame-rate videos keep their timing.
* :class:`Tracker` gives detections persistent ``track_id`` s with ByteTrack from Roboflow's
  ``trackers`` package (the successor of ``supervision``'s ByteTrack).
* :class:`VideoWriter` writes the annotated video as VP8 in WebM — the one browser-playable
  codec OpenCV's pip wheels can encode (their FFmpeg has no H.264 encoder, and MPEG-4 Part 2
  ``mp4v`` does not play in Chromium). It writes to a temporary file and renames it when
  complete, so a killed run never leaves a half file under the final name. No audio is kept.
* :func:`annotate_video` writes what :meth:`dfine.predict.Detector.stream` yields for a video
  (the one detection loop of the library, the CLI and the app) as an annotated video and JSON.

Every unreadable input raises :class:`VideoError` (a ``ValueError``) with one line saying what
failed, why, and what to do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torchvision.ops import nms

from dfine.detections import Detections
from dfine.errors import InputFileError, InvalidArgumentError, missing
from dfine.files import TMP_SUFFIX, atomic_write
from dfine.io import ImageLoadError, load_image


class Detector(Protocol):
    """What :func:`annotate_video` needs of :class:`dfine.predict.Detector` (named here, not
    imported: ``dfine.predict`` imports this module)."""

    threshold: float

    def stream(self, source: Any, **options: Any) -> Iterator[Any]:
        """One result per frame of ``source`` (see :meth:`dfine.predict.Detector.stream`)."""
        ...


__all__ = [
    "FOLDER_FPS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "VIDEO_SUFFIXES",
    "Frame",
    "FrameReader",
    "Tracker",
    "VideoError",
    "VideoInfo",
    "VideoRun",
    "VideoWriter",
    "annotate_video",
    "is_video",
    "probe",
]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".avi", ".mkv", ".mpg", ".mpeg"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MAX_PIXELS = 3840 * 2160
"""Largest frame (``width * height``, 4K UHD) a video may have; larger ones are refused."""
FOLDER_FPS = 25.0
"""Frame rate given to a folder of frames unless told otherwise."""
TRACK_LOW_THRESHOLD = 0.1
"""Detections down to this score are given to ByteTrack (its second, low-score association)
before the display threshold applies."""
OUTPUT_SUFFIX = ".webm"
FOURCCS = {".webm": "VP80", ".mkv": "VP80", ".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v"}
"""Codec OpenCV writes for each suffix. Only WebM (VP8) plays in browsers; the others are for
making test inputs."""


class VideoError(InvalidArgumentError):
    """A video that cannot be read or written; the message is one line for the user."""


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - opencv is a runtime requirement
        raise missing("video", "opencv-python-headless") from e
    return cv2


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video file (by suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What a source holds. ``frame_count`` is the container's count (an estimate for some
    formats; exact for a folder); ``width``/``height`` are of the decoded (rotated) frames."""

    source: str
    width: int
    height: int
    fps: float
    frame_count: int
    codec: str

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 4),
            "frame_count": self.frame_count,
            "duration_s": round(self.duration_s, 3),
            "codec": self.codec,
        }


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``index`` in the source (0-based), ``time_s`` its presentation
    time, ``rgb`` ``[H, W, 3]`` uint8."""

    index: int
    time_s: float
    rgb: np.ndarray


# --------------------------------------------------------------------------- opening


def _folder_frames(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _diagnose(path: Path) -> str:
    """Why FFmpeg (through OpenCV) could not open ``path``: OpenCV only says that it failed,
    so the container is probed with PyAV when it is installed (it comes with supervision)."""
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    try:
        import av
    except ImportError:
        return (
            "it is not a video OpenCV can decode (corrupt, truncated, audio-only, no frames, "
            "or an unsupported codec); re-encode it to H.264 MP4 or VP9 WebM"
        )
    try:
        with av.open(str(path)) as container:
            kinds = sorted({s.type for s in container.streams})
            if not container.streams.video:
                found = ", ".join(kinds) or "none"
                return f"it has no video stream (streams: {found}; an audio-only file?)"
            stream = container.streams.video[0]
            if stream.codec_context is None:
                return (
                    "its video codec is not supported by this OpenCV/FFmpeg build; "
                    "re-encode it to H.264 MP4 or VP9 WebM"
                )
            return (
                f"its {stream.codec_context.name} video stream could not be decoded (corrupt "
                "or truncated); re-encode it to H.264 MP4 or VP9 WebM"
            )
    except av.error.InvalidDataError:
        return (
            "it is not a video file: FFmpeg recognises no container in it (is it really a "
            f"{path.suffix or 'video'} file?)"
        )
    except (EOFError, OSError, av.error.FFmpegError):
        return "it holds no video frames (empty, or truncated before the first frame)"


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_quiet_saved: int | None = None


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Lower OpenCV's own log level (``cv2.utils.logging``, nothing else of the process) while
    it opens a file: its "Could not find decoder" lines would come before (and say less than)
    the one-line ``VideoError``. Overlapping calls from several threads restore the level the
    first one found when the last one leaves.

    OpenCV's FFmpeg writer also prints "tag 'VP80' is not supported with ... 'webm / WebM'"
    with a plain ``fprintf`` whenever a WebM writer opens (it then writes VP8 correctly); no
    log level reaches that line, and it is left alone rather than muting the process's
    stderr."""
    global _quiet_depth, _quiet_saved
    logging = _cv2().utils.logging
    with _QUIET_LOCK:
        if _quiet_depth == 0:
            _quiet_saved = logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                logging.setLogLevel(_quiet_saved)


def _open_capture(path: Path):
    cv2 = _cv2()
    with _quiet_opencv():
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"Cannot read video {path}: {_diagnose(path)}")
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def _check_pixels(source: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise VideoError(
            f"Cannot read video {source}: its frames are {width}x{height} "
            f"({width * height / 1e6:.1f} MP), above the limit of {max_pixels / 1e6:.1f} MP "
            f"(3840x2160); downscale it first (e.g. ffmpeg -i IN -vf scale=1920:-2 OUT.mp4)"
        )


def probe(source: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> VideoInfo:
    """Open ``source`` (a video file or a folder of frames), check it, describe it.

    Raises:
        VideoError: missing, not a video, no frames, unsupported codec, too large.
    """
    with FrameReader(source, max_pixels=max_pixels, start=False) as reader:
        return reader.info


# --------------------------------------------------------------------------- reading


_END = object()


class FrameReader:
    """Decode frames in a worker thread (a bounded queue of ``prefetch`` frames).

    Iterate to get :class:`Frame` objects: every ``stride``-th frame of the source, at most
    ``max_frames`` of them. Use as a context manager (or call :meth:`close`) so the thread
    stops when the consumer stops early.

    Args:
        source: a video file or a folder of image frames (sorted by name).
        stride: keep every ``stride``-th frame (the others are skipped without decoding
            their pixels).
        max_frames: stop after this many kept frames (``None``: all).
        max_pixels: refuse frames larger than this (``width * height``).
        folder_fps: the frame rate of a folder of frames.
        start: start the worker thread now (``False``: when iteration starts).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        stride: int = 1,
        max_frames: int | None = None,
        max_pixels: int = MAX_PIXELS,
        folder_fps: float = FOLDER_FPS,
        prefetch: int = 8,
        start: bool = True,
    ) -> None:
        if stride < 1:
            raise InvalidArgumentError(f"stride must be a positive integer, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise InvalidArgumentError(
                f"max_frames must be a positive integer or None, got {max_frames}"
            )
        self.path = Path(source).expanduser()
        self.stride = int(stride)
        self.max_frames = max_frames
        self._cap = None
        self._files: list[Path] = []
        self._first: np.ndarray | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.max_pixels = int(max_pixels)
        self.info = self._open(max_pixels, folder_fps)
        if start:
            self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="dfine-decode", daemon=True)
        self._thread.start()

    def _open(self, max_pixels: int, folder_fps: float) -> VideoInfo:
        path = self.path
        if not path.exists():
            raise InputFileError(f"video not found: {path}")
        if path.is_dir():
            self._files = _folder_frames(path)
            if not self._files:
                suffixes = " ".join(sorted(IMAGE_SUFFIXES))
                raise VideoError(f"Cannot read frames from {path}: no images ({suffixes}) in it")
            first = load_image(self._files[0], max_pixels=max_pixels)
            self._first = first
            height, width = first.shape[:2]
            return VideoInfo(
                str(path), width, height, float(folder_fps), len(self._files), "images"
            )
        cv2 = _cv2()
        cap = _open_capture(path)
        self._cap = cap
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            _check_pixels(path, width, height, max_pixels)
            ok, bgr = cap.read()
            if not ok or bgr is None:
                raise VideoError(
                    f"Cannot read video {path}: no frame could be decoded (empty, truncated, "
                    "or a codec this OpenCV build cannot decode); re-encode it to H.264 MP4 "
                    "or VP9 WebM"
                )
        except BaseException:
            self.close()
            raise
        self._first = bgr
        height, width = bgr.shape[:2]  # after rotation
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            fps = 25.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
        codec = fourcc.to_bytes(4, "little").decode("ascii", "replace").strip("\x00 ") or "?"
        self._first_time = float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
        return VideoInfo(str(path), width, height, fps, max(count, 1), codec)

    @property
    def expected_frames(self) -> int:
        """How many frames iteration should yield (from the container's frame count)."""
        n = math.ceil(self.info.frame_count / self.stride)
        return n if self.max_frames is None else min(n, self.max_frames)

    # the worker -----------------------------------------------------------------
    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for frame in self._decode():
                if not self._put(frame):
                    return
            self._put(_END)
        except BaseException as e:
            self._put(e)

    def _decode(self) -> Iterator[Frame]:
        kept = 0
        limit = self.max_frames
        if self._files:
            fps = self.info.fps
            for index in range(0, len(self._files), self.stride):
                if (limit is not None and kept >= limit) or self._stop.is_set():
                    return
                if index == 0 and self._first is not None:
                    rgb = self._first
                else:
                    try:
                        rgb = load_image(self._files[index], max_pixels=self.max_pixels)
                    except ImageLoadError as e:
                        raise VideoError(f"Cannot read frame {index} of {self.path}: {e}") from e
                    if rgb.shape[:2] != (self.info.height, self.info.width):
                        raise VideoError(
                            f"Cannot read frames from {self.path}: {self._files[index].name} is "
                            f"{rgb.shape[1]}x{rgb.shape[0]} but the first frame is "
                            f"{self.info.width}x{self.info.height}; all frames must be one size"
                        )
                kept += 1
                yield Frame(index, index / fps, rgb)
            return
        cv2 = _cv2()
        cap = self._cap
        index = 0
        bgr, t = self._first, self._first_time  # frame 0, decoded by _open
        self._first = None
        while True:
            if bgr is not None:  # a kept frame
                kept += 1
                yield Frame(index, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if limit is not None and kept >= limit:
                    return
            if self._stop.is_set():
                return
            index += 1
            if not cap.grab():
                break
            t = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
            bgr = None
            if index % self.stride == 0:
                ok, bgr = cap.retrieve()
                if not ok:
                    break
        reported, fps = self.info.frame_count, self.info.fps
        # Containers without a frame index (MKV, WebM) report duration x fps as the count,
        # an overestimate for variable frame rates: only a count AND a last timestamp short
        # of the duration mean the file ends early.
        if index < 0.9 * reported - 1 and t + 1 / fps < 0.9 * reported / fps:
            raise VideoError(
                f"Cannot read video {self.path}: decoding stopped after {index} of its "
                f"{reported} frames (the file is truncated or corrupt); re-encode or re-download it"
            )

    # the consumer ---------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        if self._thread is None:
            if self._stop.is_set():
                raise RuntimeError("the FrameReader is closed")
            self._start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- tracking


class Tracker:
    """ByteTrack (Roboflow ``trackers``) over :class:`Detections`.

    ``update(dets, time_s)`` returns the same detections with a ``track_id`` each. ByteTrack
    matches high-score detections first, then uses low-score ones to keep tracks alive
    through occlusion and blur, so feed it detections well below the display threshold
    (``Detector.stream`` uses :data:`TRACK_LOW_THRESHOLD`) and filter afterwards.

    ``track_id`` is ``-1`` for a detection no track holds: a new object's first frame after
    the video's first (ByteTrack confirms a track on its second match, except in the first
    frame, whose tracks it activates at once, as the original ByteTrack does), unmatched
    low-score detections, and duplicates.
    D-FINE has no NMS and now and then puts a second, lower-scoring box on an object; such a
    duplicate (IoU >= ``duplicate_iou`` with a better box) is kept out of the tracker so it
    cannot start a rival track that later steals the object's id.

    Args:
        fps: frame rate of the updates (source fps / stride).
        threshold: score from which a detection may start a new track.
        lost_seconds: how long a track without detections is kept.
        duplicate_iou: IoU above which a lower-scoring box counts as a duplicate.
    """

    def __init__(
        self,
        fps: float,
        threshold: float = 0.5,
        lost_seconds: float = 1.0,
        duplicate_iou: float = 0.7,
    ) -> None:
        try:
            from trackers import ByteTrackTracker
        except ImportError as e:  # pragma: no cover - a runtime requirement
            raise missing("tracking", "trackers") from e
        import supervision as sv

        self._sv = sv
        self.fps = float(fps)
        self.duplicate_iou = float(duplicate_iou)
        self._tracker = ByteTrackTracker(
            lost_track_buffer=max(round(lost_seconds * fps), 1),
            frame_rate=self.fps,
            track_activation_threshold=threshold,
            minimum_consecutive_frames=1,
            high_conf_det_threshold=threshold,
        )
        self._activation = float(threshold)
        self._first = True

    def _activate(self, out: Any) -> None:
        """Give the tracks the first frame started an id now (the original ByteTrack activates
        them in frame 1; ``trackers`` waits for their second match). On the first frame every
        track is new, spawned in the order of its row among the output's unmatched
        detections that clear the activation threshold."""
        spawned = np.flatnonzero((out.tracker_id == -1) & (out.confidence >= self._activation))
        tracks = self._tracker.tracks
        if len(tracks) != len(spawned):  # pragma: no cover - a changed trackers release
            raise RuntimeError(
                f"ByteTrack started {len(tracks)} tracks for {len(spawned)} first-frame "
                "detections; the trackers package changed how it spawns tracks"
            )
        for row, track in zip(spawned, tracks):
            track.tracker_id = self._tracker._allocate_tracker_id()
            out.tracker_id[row] = track.tracker_id

    def update(self, dets: Detections, time_s: float | None = None) -> Detections:
        """Detections of the next frame → the same detections, with ``track_id``."""
        n = len(dets)
        rows = nms(torch.from_numpy(dets.boxes), torch.from_numpy(dets.scores), self.duplicate_iou)
        rows = np.sort(rows.numpy())
        sv_dets = self._sv.Detections(
            xyxy=dets.boxes[rows].reshape(-1, 4),
            confidence=dets.scores[rows],
            class_id=dets.labels[rows],
            data={"row": rows},
        )
        first = self._first
        self._first = False
        out = self._tracker.update(sv_dets, timestamp=time_s)
        if first and len(out):
            self._activate(out)
        ids = np.full(n, -1, dtype=np.int64)
        if len(out):
            ids[np.asarray(out.data["row"], dtype=np.int64)] = out.tracker_id
        dets.track_id = ids
        return dets


# --------------------------------------------------------------------------- writing


class VideoWriter:
    """Write RGB frames to a video (VP8 WebM; see ``FOURCCS`` for other suffixes), atomically.

    Frames go to ``.<stem>.tmp.<pid><suffix>`` next to ``path`` (OpenCV picks the container
    from the suffix) and the file is renamed to ``path`` by :meth:`close` only when every
    frame was written; :meth:`abort` (or an exception inside ``with``) removes it. Writing
    runs in a worker thread so encoding overlaps the model.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        cv2 = _cv2()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCCS:
            raise InvalidArgumentError(
                f"cannot write {self.path}: the suffix must be one of {', '.join(FOURCCS)}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}{TMP_SUFFIX}.{os.getpid()}{suffix}")
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        with _quiet_opencv():  # its FFmpeg plugin warns "tag 'VP80' is not supported"
            self._writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*FOURCCS[suffix]), float(fps), self.size
            )
        if not self._writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise VideoError(
                f"Cannot write video {self.path}: this OpenCV has no {FOURCCS[suffix]} encoder "
                "(install opencv-python from PyPI)"
            )
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="dfine-encode", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        cv2 = _cv2()
        while True:
            rgb = self._queue.get()
            if rgb is None:
                return
            if self._error is None:
                try:
                    self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                except BaseException as e:
                    self._error = e

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 RGB frame of the writer's size."""
        if rgb.shape != (self.size[1], self.size[0], 3):
            raise InvalidArgumentError(
                f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the video {self.size}"
            )
        if self._error is not None:
            raise self._error
        self._queue.put(np.ascontiguousarray(rgb))
        self.frames += 1

    def _finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._writer.release()

    def close(self) -> Path:
        """Finish the file and move it to ``path``."""
        try:
            self._finish()
            if self._error is not None:
                raise self._error
            if self.frames == 0:
                raise VideoError(f"Cannot write video {self.path}: no frames were written")
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        """Stop and delete the temporary file."""
        self._finish()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def count_frames(path: str | os.PathLike) -> int:
    """Decode every frame of a video and count them (for checks and tests)."""
    cap = _open_capture(Path(path))
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class VideoRun:
    """What :func:`annotate_video` did: the source, the written files, one ``Detections`` per
    processed frame (without their images), and the wall time."""

    info: VideoInfo
    video: Path
    json: Path | None
    frames: list[Detections]
    stride: int
    tracked: bool
    seconds: float
    capped: bool

    @property
    def fps(self) -> float:
        """Processed frames per second of wall time (decode + model + track + encode)."""
        return len(self.frames) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON written next to the video: ``{"video": {...}, "frames": [...]}``."""
        video = self.info.to_dict()
        video.update(
            source_fps=video.pop("fps"),
            source_frame_count=video.pop("frame_count"),
            fps=round(self.info.fps / self.stride, 4),
            frame_count=len(self.frames),
            stride=self.stride,
            tracked=self.tracked,
            capped=self.capped,
            output=self.video.name,
        )
        video.pop("duration_s")
        frames = [
            {
                "index": d.frame_index,
                "time_s": round(float(d.time_s), 4),
                "detections": d.to_dict()["detections"],
            }
            for d in self.frames
        ]
        return {"video": video, "frames": frames}

    def write_json(self) -> Path:
        """Write :meth:`to_dict` (compact JSON) to ``self.json``, atomically."""
        if self.json is None:
            raise InvalidArgumentError("this VideoRun has no json path")
        text = json.dumps(self.to_dict(), separators=(",", ":")) + "\n"
        return atomic_write(self.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def annotate_video(
    detector: Detector,
    source: str | os.PathLike | FrameReader,
    out_video: str | os.PathLike,
    out_json: str | os.PathLike | None = None,
    *,
    track: bool = True,
    stride: int = 1,
    max_frames: int | None = None,
    threshold: float | None = None,
    max_pixels: int = MAX_PIXELS,
    on_frame: Callable[[Any], None] | None = None,
    batch: int = 1,
    trace: bool = False,
    max_detections: int | None = None,
) -> VideoRun:
    """Detect (and track) every kept frame of ``source``, draw the boxes (``#id name score``)
    and write the annotated video (``.webm``, VP8, at ``source fps / stride``) and, when
    ``out_json`` is given, the detections of every frame (:meth:`VideoRun.to_dict`).

    ``source``: a video file, a folder of frames, or an open :class:`FrameReader` (its own
    ``stride`` and ``max_frames`` then apply; the caller closes it). The frames come from
    ``detector.stream`` (:meth:`dfine.predict.Detector.stream`). ``on_frame(result)`` is
    called after each frame is written, with what the stream yields (the frame's
    :class:`Detections`, its ``image`` still set; with ``trace=True`` the tuple
    ``(detections, trace, query_index)``), for progress bars and per-frame analysis.

    Both files are written under temporary names and renamed when complete; on any error
    neither exists, and whatever was opened is closed.
    """
    out_video = Path(out_video)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if isinstance(source, FrameReader):
            reader = source
        else:
            reader = stack.enter_context(
                FrameReader(
                    source, stride=stride, max_frames=max_frames, max_pixels=max_pixels, start=False
                )
            )
        info = reader.info
        results = detector.stream(
            reader,
            track=track,
            threshold=threshold,
            batch=batch,
            trace=trace,
            max_detections=max_detections,
        )
        stack.callback(getattr(results, "close", lambda: None))
        writer = stack.enter_context(
            VideoWriter(out_video, info.fps / reader.stride, (info.width, info.height))
        )
        frames = _write_frames(writer, results, on_frame)
        if not frames:
            raise VideoError(f"Cannot read video {reader.path}: it yielded no frames")
    total = math.ceil(info.frame_count / reader.stride)
    run = VideoRun(
        info=info,
        video=out_video,
        json=Path(out_json) if out_json is not None else None,
        frames=frames,
        stride=reader.stride,
        tracked=track,
        seconds=time.perf_counter() - start,
        capped=reader.max_frames is not None and total > reader.max_frames,
    )
    if run.json is not None:
        try:
            run.write_json()
        except BaseException:
            out_video.unlink(missing_ok=True)
            raise
    return run


def _write_frames(
    writer: VideoWriter, results: Iterator[Any], on_frame: Callable[[Any], None] | None
) -> list[Detections]:
    """Draw and write every frame's detections; the detections, without their images."""
    frames: list[Detections] = []
    for result in results:
        dets = result[0] if isinstance(result, tuple) else result
        writer.write(np.asarray(dets.plot()))
        if on_frame is not None:
            on_frame(result)
        dets.image = None  # keep the boxes, not every frame's pixels
        frames.append(dets)
    return frames
