"""The video part of ``dfine predict``: options and the per-video loop.

``dfine predict clip.mp4 photo.jpg --weights W --out DIR --track`` writes, for each video,
``DIR/<stem>.webm`` (boxes, class names, scores and track ids drawn; VP8, plays in browsers)
and ``DIR/<stem>.json``::

    {"video": {"source", "width", "height", "fps", "frame_count", "source_fps",
               "source_frame_count", "stride", "tracked", "capped", "codec", "output"},
     "frames": [{"index": i, "time_s": t,
                 "detections": [{"box": [x1, y1, x2, y2], "score", "label", "name",
                                 "track_id"}]}]}
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dfine.argtypes import positive_int
from dfine.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only: the parser must not import the video stack
    from dfine.video import FrameReader, VideoRun

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_MAX_FRAMES",
    "add_video_arguments",
    "batch_size",
    "fixed_batch",
    "predict_videos",
    "unique_stem",
]

DEFAULT_BATCH = 4
"""Frames per forward pass unless ``--batch`` says otherwise: measured fastest end to end
(decode + model + track + encode) against 1 and 8 on torch and OpenVINO at 320² on 2 cores."""
DEFAULT_MAX_FRAMES = 18_000
"""Frames ``dfine predict`` processes per video unless ``--max-frames`` says otherwise
(10 minutes at 30 fps)."""


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """``--track``, ``--stride`` and ``--max-frames`` for ``dfine predict``."""
    group = parser.add_argument_group("video inputs (.mp4 .mov .webm .avi .mkv ...)")
    group.add_argument(
        "--track",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give detections persistent track ids with ByteTrack (default on)",
    )
    group.add_argument(
        "--stride",
        type=positive_int,
        default=1,
        help="process every N-th frame; the output video has fps/N (default 1)",
    )
    group.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help=f"images or video frames per forward pass (default {DEFAULT_BATCH}, or 1 for a model file "
        "exported with a fixed batch); the fastest on a 2-core CPU for torch and OpenVINO",
    )
    group.add_argument(
        "--max-frames",
        type=positive_int,
        default=DEFAULT_MAX_FRAMES,
        help=f"process at most N frames per video, then stop with a note (default {DEFAULT_MAX_FRAMES})",
    )


def predict_videos(detector, videos: list[Path], out: Path, args, stems: dict[str, int]) -> int:
    """Annotate every video (each opened once); print one line per video (or per failure).
    Returns the number of videos that failed. ``stems`` de-duplicates output names across all
    inputs."""
    from dfine.video import FrameReader, VideoError

    failures = 0
    batch = batch_size(detector, args.batch) if videos else 1
    for path in videos:
        try:
            reader = FrameReader(path, stride=args.stride, max_frames=args.max_frames, start=False)
        except (VideoError, FileNotFoundError) as e:
            failures += 1
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        with reader:
            run = _annotate(detector, reader, out / unique_stem(path.stem, stems), args, batch)
        if run is None:
            failures += 1
        elif not args.quiet:
            tracks = {int(t) for d in run.frames if d.track_id is not None for t in d.track_id}
            tracks.discard(-1)
            detections = sum(len(d) for d in run.frames)
            tracked = f", {len(tracks)} tracks" if args.track else ""
            print(
                f"{path}: {len(run.frames)} frames, {detections} detections{tracked}; "
                f"{run.fps:.1f} frames/s -> {run.video}, {run.json}"
            )
    return failures


def _annotate(detector, reader: FrameReader, stem: Path, args, batch: int) -> VideoRun | None:
    """One open video → ``stem.webm`` and ``stem.json``; ``None`` (and a line) if it fails."""
    from tqdm import tqdm

    from dfine.video import OUTPUT_SUFFIX, VideoError, annotate_video

    path = reader.path
    if math.ceil(reader.info.frame_count / reader.stride) > args.max_frames:
        every = f" of every {args.stride}" if args.stride > 1 else ""
        print(
            f"{path}: {reader.info.frame_count} frames, too long; processing the first "
            f"{args.max_frames}{every} (--max-frames {args.max_frames}; raise it for more)",
            file=sys.stderr,
        )
    bar = tqdm(
        total=reader.expected_frames,
        desc=path.name,
        unit="frame",
        disable=args.quiet,
        leave=False,
    )
    try:
        return annotate_video(
            detector,
            reader,
            stem.with_name(stem.name + OUTPUT_SUFFIX),
            stem.with_name(stem.name + ".json"),
            track=args.track,
            batch=batch,
            on_frame=lambda _dets: bar.update(1),
        )
    except VideoError as e:
        tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
        return None
    finally:
        bar.close()


def batch_size(detector, asked: int | None) -> int:
    """``--batch``: as asked, or the default; a model fixed to one batch size runs 1."""
    fixed = fixed_batch(detector)
    if asked is None:
        return 1 if fixed is not None else DEFAULT_BATCH
    if asked > 1 and fixed is not None:  # (a fixed batch > 1 fails on the last chunk)
        raise InvalidArgumentError(
            f"--batch {asked}: this model file has a fixed batch of {fixed}; export it with a "
            "dynamic batch (dfine export W, the default) or drop --batch"
        )
    return asked


def fixed_batch(detector) -> int | None:
    """The batch size an exported model is fixed to (ONNX Runtime, OpenVINO), or ``None``
    when it takes any (a dynamic-batch export, the torch backend)."""
    backend = detector.backend
    session = getattr(backend, "session", None)  # ONNX Runtime
    if session is not None:
        dim = session.get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) else None
    stages = getattr(backend, "stages", None)  # OpenVINO: compiled model(s), input first
    if stages:
        dim = stages[0].inputs[0].get_partial_shape()[0]
        return dim.get_length() if dim.is_static else None
    return None


def unique_stem(stem: str, stems: dict[str, int]) -> str:
    """``stem``, or ``stem_N`` when an earlier input had the same name."""
    if stem in stems:
        stems[stem] += 1
        return f"{stem}_{stems[stem]}"
    stems[stem] = 0
    return stem
