"""One tracked object through a video: its score, box and per-edge uncertainty over time.

D-FINE predicts every box edge as a distribution over bins (FDR); its standard deviation σ
(pixels, :func:`analysis.distributions.edge_stats`, last decoder layer) says how sure the
model is of that edge. Followed along a track it shows where the model becomes unsure —
occlusion, motion blur, an object leaving the frame — frame by frame.

- :func:`edge_sigmas` → ``[N, 4]`` σ of the detections of one traced frame.
- :func:`track_series` → :class:`TrackSeries` for one ``track_id`` over a video's frames.
- :func:`uncertainty_jumps`: the frames whose σ (relative to the box size) stands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis._common import ImageSize, class_name
from analysis.distributions import edge_stats
from dfine.detections import Detections
from dfine.errors import InvalidArgumentError
from dfine.nn.decoder import DecoderTrace

__all__ = ["TrackSeries", "edge_sigmas", "track_ids", "track_series", "uncertainty_jumps"]


def edge_sigmas(trace: DecoderTrace, queries: np.ndarray, image_size: ImageSize) -> np.ndarray:
    """σ of the left, top, right, bottom edge distributions of ``queries`` at the last
    decoder layer, pixels of the original image: ``[N, 4]`` float64."""
    queries = np.asarray(queries, dtype=np.int64)
    if queries.size == 0:
        return np.zeros((0, 4))
    return edge_stats(trace, queries, image_size)["std_px"][-1]


@dataclass(frozen=True)
class TrackSeries:
    """One track over the frames where it was detected (T of them, in time order).

    Attributes:
        track_id: the ByteTrack id.
        label: the class most of its detections have; ``name`` that class's name.
        frame_index: ``[T]`` source frame indices; ``time_s``: ``[T]`` timestamps (s).
        scores: ``[T]``; boxes: ``[T, 4]`` ``x1, y1, x2, y2`` pixels.
        sigma_px: ``[T, 4]`` σ of the left, top, right, bottom edges (pixels); NaN where the
            frame was not traced.
        jumps: ``[J]`` positions (into the T frames) where the uncertainty jumps.
    """

    track_id: int
    label: int
    name: str
    frame_index: np.ndarray
    time_s: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    sigma_px: np.ndarray
    jumps: np.ndarray

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]

    @property
    def relative_sigma(self) -> np.ndarray:
        """``[T]`` mean edge σ over the box's size ``sqrt(w * h)``: comparable across sizes."""
        size = np.sqrt(np.clip(self.widths * self.heights, 1e-6, None))
        return self.sigma_px.mean(axis=1) / size

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])


def track_ids(frames: Sequence[Detections]) -> list[tuple[int, int, int]]:
    """``(track_id, label, frames)`` of every track in ``frames``, longest first; ``label``
    is the class of most of its detections."""
    counts: dict[int, dict[int, int]] = {}
    for dets in frames:
        if dets.track_id is None:
            continue
        for tid, label in zip(dets.track_id.tolist(), dets.labels.tolist()):
            if tid >= 0:
                per = counts.setdefault(tid, {})
                per[label] = per.get(label, 0) + 1
    rows = [(tid, max(per, key=per.get), sum(per.values())) for tid, per in counts.items()]
    return sorted(rows, key=lambda r: (-r[2], r[0]))


def track_series(
    frames: Sequence[Detections],
    sigmas: Sequence[np.ndarray | None],
    track_id: int,
    class_names: Sequence[str] | None = None,
    k: float = 3.0,
    min_ratio: float = 1.5,
) -> TrackSeries:
    """The frames of ``track_id``: ``frames[t]`` are the detections of frame t (with
    ``track_id``), ``sigmas[t]`` their ``[N_t, 4]`` edge σ (``None``: not traced).
    ``k`` and ``min_ratio`` are those of :func:`uncertainty_jumps`."""
    if len(frames) != len(sigmas):
        raise InvalidArgumentError(f"{len(frames)} frames but {len(sigmas)} sigma arrays")
    index, times, scores, boxes, sig, labels = [], [], [], [], [], []
    for dets, sigma in zip(frames, sigmas):
        if dets.track_id is None:
            continue
        rows = np.flatnonzero(dets.track_id == track_id)
        if rows.size == 0:
            continue
        r = int(rows[np.argmax(dets.scores[rows])])
        index.append(-1 if dets.frame_index is None else dets.frame_index)
        times.append(np.nan if dets.time_s is None else dets.time_s)
        scores.append(float(dets.scores[r]))
        boxes.append(dets.boxes[r].astype(np.float64))
        labels.append(int(dets.labels[r]))
        sig.append(np.full(4, np.nan) if sigma is None else np.asarray(sigma, np.float64)[r])
    if not index:
        raise InvalidArgumentError(f"track {track_id} is in none of the {len(frames)} frames")
    label = int(np.bincount(labels).argmax())
    series = TrackSeries(
        track_id=int(track_id),
        label=label,
        name=class_name(class_names, label),
        frame_index=np.asarray(index, dtype=np.int64),
        time_s=np.asarray(times, dtype=np.float64),
        scores=np.asarray(scores, dtype=np.float64),
        boxes=np.stack(boxes),
        sigma_px=np.stack(sig),
        jumps=np.zeros(0, dtype=np.int64),
    )
    jumps = uncertainty_jumps(series.relative_sigma, k=k, min_ratio=min_ratio)
    return TrackSeries(**{**series.__dict__, "jumps": jumps})


def uncertainty_jumps(values: np.ndarray, k: float = 3.0, min_ratio: float = 1.5) -> np.ndarray:
    """Positions where ``values`` (``[T]``, e.g. :attr:`TrackSeries.relative_sigma`) stand out
    from the track's typical level: above ``median + k · 1.4826 · MAD`` *and* above
    ``min_ratio · median``. NaN entries are never jumps. Returns int64 positions."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    if ok.sum() < 3:
        return np.zeros(0, dtype=np.int64)
    median = float(np.median(values[ok]))
    mad = 1.4826 * float(np.median(np.abs(values[ok] - median)))
    limit = max(median + k * mad, min_ratio * median)
    return np.flatnonzero(ok & (values > limit)).astype(np.int64)
