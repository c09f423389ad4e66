"""The Video tab: a video in, annotated video, per-frame detections, tracks and their
per-edge uncertainty out; and the live webcam stream.

Endpoints: ``/video`` (run a video), ``/track`` (one track's σ / score / size over time),
``/video_frame`` (one processed frame's detections), ``/webcam`` (one streamed frame).

Caps (shown on the page; environment variables for Spaces): ``DFINE_VIDEO_MAX_FRAMES``
(processed frames, default 300), ``DFINE_VIDEO_MAX_SECONDS`` (of the source, default 60),
``DFINE_VIDEO_MAX_PIXELS`` (frame width × height, default 1920 × 1080). Longer videos are
cut at the cap, with a note; larger frames are refused.

Layout and handlers live together here; :func:`build` makes the tab. The handlers are methods
of :class:`VideoTab`, plain functions of the values of the components, testable without a
server.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from analysis import figures
from analysis.tracks import edge_sigmas, track_ids, track_series
from app import gpu
from app.checks import check_max_detections, check_size, check_threshold, first_int
from app.errors import UserError, user_errors
from app.files import OutputDir
from app.state import AppState
from app.tabs.common import Controls, quietly
from dfine.detections import Detections
from dfine.video import FrameReader, VideoInfo, VideoRun, annotate_video

__all__ = ["VideoCaps", "VideoTab", "build"]

QUEUE_ID = "dfine-video"
"""Concurrency group of the video and webcam events: together they run one at a time, so a
long video or an open webcam cannot take the CPU from everyone."""
BATCH = 4
"""Frames per forward pass (``dfine predict``'s default: the fastest on a 2-core CPU)."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return number


@dataclass(frozen=True)
class VideoCaps:
    """What one request may process: at most ``max_frames`` processed frames and the first
    ``max_seconds`` of the source; frames above ``max_pixels`` are refused."""

    max_frames: int = 300
    max_seconds: int = 60
    max_pixels: int = 1920 * 1080
    webcam_seconds: int = 120

    @classmethod
    def from_env(cls) -> VideoCaps:
        return cls(
            max_frames=_env_int("DFINE_VIDEO_MAX_FRAMES", cls.max_frames),
            max_seconds=_env_int("DFINE_VIDEO_MAX_SECONDS", cls.max_seconds),
            max_pixels=_env_int("DFINE_VIDEO_MAX_PIXELS", cls.max_pixels),
            webcam_seconds=_env_int("DFINE_WEBCAM_SECONDS", cls.webcam_seconds),
        )

    def markdown(self) -> str:
        return (
            f"**Limits of this server:** at most **{self.max_frames} processed frames** and "
            f"the first **{self.max_seconds} s** of a video (longer ones are cut, with a note); "
            f"frames up to **{self.max_pixels / 1e6:.1f} MP** (e.g. 1920×1080; larger ones are "
            "refused). Set by `DFINE_VIDEO_MAX_FRAMES`, `DFINE_VIDEO_MAX_SECONDS`, "
            "`DFINE_VIDEO_MAX_PIXELS`. The output is a silent WebM (VP8)."
        )


TEXT = """\
### Video: detections, tracks and their uncertainty through time
Upload a video (mp4, mov, webm, avi, mkv) and press **Run on the video**. Every processed frame \
goes through D-FINE with the **model, input size, threshold, detection limit and letterbox of the \
Detect tab**; ByteTrack gives each object a track id (`#3` on its box). Move the **frame slider** \
to see a frame's detections, open that frame in the **analysis tabs**, or pick a **track** to see \
the σ of its four edge distributions, its score and its box size over time — frames where the \
uncertainty jumps (occlusion, motion blur, leaving the frame) are marked. With tracking on, each \
frame's one forward pass is traced with PyTorch (for the edge σ); with it off, the fastest runtime \
installed here runs the plain forward (the summary names it; the webcam uses it too) and the \
frame table has no σ.
"""

WEBCAM_TEXT = """\
Detections at the model's speed: frames that arrive while the model is busy are dropped, not \
queued. The stream shares the video queue, so it waits while someone's video runs, and each \
stream stops after its time limit.
"""


@dataclass
class VideoResult:
    """One processed video, kept on the server for the slider, the track view and
    "open in analysis"."""

    run_id: str
    folder: Path
    source: Path
    info: VideoInfo
    run: VideoRun
    sigmas: list[np.ndarray | None]
    frame_files: list[Path]
    class_names: tuple[str, ...]
    note: str
    runtime: str = "PyTorch f32"
    """What ran the model (``Backend.label``)."""
    created: float = field(default_factory=time.time)

    @property
    def frames(self) -> list[Detections]:
        return self.run.frames


class VideoRuns:
    """The processed videos by run id; each run's folder lives in the app's
    :class:`~app.files.OutputDir` until the session that made it lets it go (:meth:`release`,
    called by the tab's ``gr.State`` when the session ends) or the server stops. A session
    keeps its last ``per_session`` runs (the page shows one; API clients may read a few)."""

    def __init__(self, outputs: OutputDir, per_session: int = 4) -> None:
        self.outputs = outputs
        self.per_session = per_session
        self._items: dict[str, VideoResult] = {}
        self._lock = threading.Lock()

    def folder(self) -> tuple[str, Path]:
        """``(run_id, folder)`` for a new run."""
        return self.outputs.run("video")

    def add(self, result: VideoResult, session: list[str] | None = None) -> list[str]:
        """Keep ``result``; the session's run ids, its oldest beyond ``per_session`` released."""
        with self._lock:
            self._items[result.run_id] = result
        owned = [*(session or []), result.run_id]
        self.release(owned[: -self.per_session])
        return owned[-self.per_session :]

    def release(self, run_ids: list[str] | None) -> None:
        """Forget these runs and remove their folders (a session ended)."""
        for run_id in run_ids or []:
            with self._lock:
                result = self._items.pop(run_id, None)
            if result is not None:
                self.outputs.release(result.folder)

    def get(self, run_id: str | None) -> VideoResult:
        with self._lock:
            result = self._items.get(str(run_id or ""))
        if result is None:
            raise UserError(
                "This video's result is no longer on the server (or none was run yet); press "
                "'Run on the video' again."
            )
        return result


class VideoTab:
    """The tab's handlers over the app's shared state (``state.store``: the models,
    ``state.outputs``: the folder for files handed to users)."""

    def __init__(self, state: AppState, caps: VideoCaps | None = None) -> None:
        self.state = state
        self.caps = caps or VideoCaps.from_env()
        self.runs = VideoRuns(state.outputs)

    # ------------------------------------------------------------------ /video
    @user_errors
    def video(
        self,
        video: str | None,
        threshold: float,
        size: int | str,
        model: str | None,
        max_detections: int,
        stride: int | float = 1,
        track: bool = True,
        letterbox: bool = False,
        session_runs: list[str] | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's idiom)
    ) -> tuple[str, str, str, dict, dict, str, list[str]]:
        """Annotated video (WebM), JSON of every frame, summary, the frame slider's range,
        the track picker's choices, the run id the other endpoints take, and the session's
        runs (a ``gr.State``: they are removed when the session ends)."""
        if not video:
            raise UserError("Upload a video first (mp4, mov, webm, avi or mkv).")
        threshold = check_threshold(threshold)
        size = check_size(size)
        max_detections = check_max_detections(max_detections)
        stride_i = first_int(stride, "stride") or 1
        if stride_i < 1:
            raise UserError(f"The stride must be a positive whole number, got {stride!r}.")
        entry = self.state.store.entry(model)  # an unknown model fails before a file opens
        with FrameReader(
            Path(video), stride=stride_i, max_pixels=self.caps.max_pixels, start=False
        ) as reader:
            note = self._cap(reader)
            if not self.state.store.is_loaded(entry.key):
                progress(0.0, desc=f"Loading {entry.label}")
            loaded = self.state.store.get(entry.key)
            budget = self.state.store.budget(entry.key)
            if track:  # the track view reads every frame's trace: torch
                detector = loaded.detector(size, letterbox, budget)
            else:  # plain detections: the fastest runtime here (exported once per model/size)
                progress(0.0, desc="Preparing the fastest runtime for this model")
                detector = loaded.fast_detector(size, letterbox, budget)
            settings = (threshold, max_detections, track, note)
            result = self._run(reader, detector, loaded, settings, progress)
        owned = self.runs.add(result, session_runs)
        frames = result.frames
        tracks = track_ids(frames)
        choices = [
            (f"#{tid} · {loaded.class_names[label]} · {n} frames", str(tid))
            for tid, label, n in tracks
        ]
        return (
            str(result.run.video),
            str(result.run.json),
            _summary(result, track),
            gr.update(minimum=0, maximum=max(len(frames) - 1, 1), value=0, step=1),
            gr.update(choices=choices, value=choices[0][1] if choices else None),
            result.run_id,
            owned,
        )

    def _cap(self, reader: FrameReader) -> str:
        """Cut ``reader`` at this server's limits; the note saying so (``""`` if uncut)."""
        info = reader.info
        limit = min(
            self.caps.max_frames, math.ceil(self.caps.max_seconds * info.fps / reader.stride)
        )
        note = ""
        if reader.expected_frames > limit:
            note = (
                f"The video has {info.frame_count} frames ({info.duration_s:.1f} s); processed "
                f"the first {limit} (this server's limits: {self.caps.max_frames} frames, "
                f"{self.caps.max_seconds} s)."
            )
        reader.max_frames = min(limit, reader.expected_frames)
        return note

    def _run(
        self,
        reader: FrameReader,
        detector: Any,
        loaded: Any,
        settings: tuple[float, int, bool, str],
        progress: gr.Progress,
    ) -> VideoResult:
        """The run's folder, filled by :func:`dfine.video.annotate_video` (the library's one
        pipeline) plus each frame's JPEG and, when tracking, its edge σ (the traced forward);
        the folder is removed if anything fails."""
        threshold, max_detections, track, note = settings
        run_id, folder = self.runs.folder()
        stem = reader.path.stem[:60] or "video"
        total = reader.expected_frames
        sigmas: list[np.ndarray | None] = []
        files: list[Path] = []
        start = time.perf_counter()

        def on_frame(result: Any) -> None:
            if track:  # the track view needs every frame's edge σ: the stream traces
                dets, trace, queries = result
                sigmas.append(edge_sigmas(trace, queries.numpy(), dets.image_size))
            else:
                dets = result
                sigmas.append(None)
            files.append(_write_jpeg(folder / f"frame_{len(files):05d}.jpg", dets.image))
            n = len(files)
            rate = n / max(time.perf_counter() - start, 1e-9)
            progress(n / total, desc=f"frame {n}/{total} · {rate:.1f} frames/s")

        try:
            run = annotate_video(
                detector,
                reader,
                folder / f"{stem}_dfine.webm",
                folder / f"{stem}_dfine.json",
                track=track,
                threshold=threshold,
                max_detections=max_detections,
                batch=BATCH,
                trace=track,
                on_frame=on_frame,
            )
        except BaseException:
            self.state.outputs.release(folder)
            raise
        names = loaded.class_names
        return VideoResult(
            run_id, folder, reader.path, run.info, run, sigmas, files, names, note,
            detector.backend.label,
        )  # fmt: skip

    # ------------------------------------------------------------------ /video_frame
    @user_errors
    def frame(self, run_id: str, position: int | float) -> tuple[str, pd.DataFrame, str]:
        """The processed frame at ``position`` (0-based) with its boxes, its detections table
        (track, class, score, box, σ per edge) and a caption."""
        result = self.runs.get(run_id)
        pos = self._position(result, position)
        dets = result.frames[pos]
        rgb = np.asarray(Image.open(result.frame_files[pos]).convert("RGB"))
        path = self.state.outputs.path(f"video_frame_{dets.frame_index}.webp")
        dets.plot(rgb).save(path, format="WEBP", quality=90)
        caption = (
            f"Frame {dets.frame_index} of the source (t = {dets.time_s:.3f} s): "
            f"{len(dets)} detection{'s' if len(dets) != 1 else ''}."
        )
        return str(path), _frame_table(dets, result.sigmas[pos]), caption

    @staticmethod
    def _position(result: VideoResult, position: int | float) -> int:
        pos = first_int(position, "frame")
        pos = 0 if pos is None else pos
        if not 0 <= pos < len(result.frames):
            raise UserError(
                f"There is no processed frame {pos}: this video has {len(result.frames)} "
                f"(0 to {len(result.frames) - 1})."
            )
        return pos

    # ------------------------------------------------------------------ open in analysis
    @user_errors
    def open_frame(self, run_id: str, position: int | float) -> tuple[str, Any]:
        """The source frame, decoded again exactly (PNG, no JPEG loss), for the Detect tab's
        image, and the Refinement tab selected: every analysis tab then shows that frame."""
        result = self.runs.get(run_id)
        pos = self._position(result, position)
        index = result.frames[pos].frame_index
        with FrameReader(result.source, max_pixels=self.caps.max_pixels) as reader:
            rgb = next((f.rgb for f in reader if f.index == index), None)
        if rgb is None:
            raise UserError(f"Frame {index} could not be decoded again from the video.")
        path = self.state.outputs.path(f"{result.source.stem[:40]}_frame{index}.png")
        Image.fromarray(rgb).save(path, format="PNG", compress_level=1)
        return str(path), gr.Tabs(selected="refinement")

    # ------------------------------------------------------------------ /track
    @user_errors
    def track(self, run_id: str, track: str | int | None) -> tuple[go.Figure, pd.DataFrame, str]:
        """One track over time: the figure (σ per edge, score, box size, jumps marked), a
        table of its frames and a summary naming the jumps."""
        result = self.runs.get(run_id)
        tid = first_int(track, "track")
        known = [t for t, _, _ in track_ids(result.frames)]
        if tid is None:
            if not known:
                raise UserError("This video has no tracks (was tracking on?).")
            tid = known[0]
        if tid not in known:
            raise UserError(
                f"There is no track #{tid} in this video; tracks: "
                + (", ".join(f"#{t}" for t in known[:20]) or "none")
            )
        series = track_series(result.frames, result.sigmas, tid, result.class_names)
        fig = figures.track_figure(series)
        table = pd.DataFrame(
            {
                "frame": series.frame_index,
                "time (s)": np.round(series.time_s, 3),
                "score": np.round(series.scores, 4),
                **{
                    f"σ {e} (px)": np.round(series.sigma_px[:, i], 2)
                    for i, e in enumerate(("left", "top", "right", "bottom"))
                },
                "width (px)": np.round(series.widths, 1),
                "height (px)": np.round(series.heights, 1),
                "jump": np.isin(np.arange(len(series)), series.jumps),
            }
        )
        jumps = ", ".join(str(int(series.frame_index[j])) for j in series.jumps) or "none"
        text = (
            f"**Track #{tid}** ({series.name}): {len(series)} frames, mean σ "
            f"{np.nanmean(series.sigma_px):.2f} px; uncertainty jumps at frames: {jumps}."
        )
        return fig, table, text

    # ------------------------------------------------------------------ /webcam
    @user_errors
    def webcam(
        self,
        frame: np.ndarray | None,
        threshold: float,
        size: int | str,
        model: str | None,
        times: list[float] | None = None,
        letterbox: bool = False,
    ) -> tuple[np.ndarray | None, str, list[float]]:
        """One streamed webcam frame → the frame with its detections, the measured rate
        (frames answered per second over the last ones) and the updated timestamps."""
        times = list(times or [])
        if frame is None:
            return None, "Waiting for the webcam…", times
        threshold = check_threshold(threshold)
        size = check_size(size)
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.dtype != np.uint8:
            raise UserError(f"Expected an RGB webcam frame, got {frame.dtype} {frame.shape}.")
        if frame.shape[0] * frame.shape[1] > self.caps.max_pixels:
            raise UserError(
                f"The webcam frame is {frame.shape[1]}x{frame.shape[0]}, above this server's "
                f"{self.caps.max_pixels / 1e6:.1f} MP limit."
            )
        entry = self.state.store.entry(model)
        loaded = self.state.store.get(entry.key)
        detector = loaded.fast_detector(size, letterbox, self.state.store.budget(entry.key))
        dets = gpu.detect(detector, np.ascontiguousarray(frame[..., :3]), threshold)
        times = [*times[-19:], time.time()]
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        ms = dets.speed.get("inference", 0.0)
        shown = f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"  # a slow CPU never reads "0.0"
        text = (
            f"**{shown} frames/s** shown · model {ms:.0f} ms/frame on {detector.backend.label} "
            f"· {dets.summary()}"
        )
        return np.asarray(dets.plot()), text, times


def _write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """``rgb`` as a JPEG (quality 92) at ``path``."""
    Image.fromarray(rgb).save(path, format="JPEG", quality=92)
    return path


def _summary(result: VideoResult, track: bool) -> str:
    run, info = result.run, result.info
    n = len(run.frames)
    count = sum(len(d) for d in run.frames)
    tracks = len(track_ids(run.frames)) if track else 0
    lines = [
        f"**{n} frames** processed of {info.frame_count} ({info.width}×{info.height}, "
        f"{info.fps:.2f} fps, codec {info.codec}, stride {run.stride}) in {run.seconds:.1f} s "
        f"= **{run.fps:.1f} frames/s** (decode + "
        + ("traced model + track" if track else "model")
        + " + encode).",
        f"{count} detections" + (f", {tracks} tracks." if track else " (tracking off)."),
        f"Runtime: **{result.runtime}**"
        + (
            " (the tracking analysis reads every frame's decoder trace, which only PyTorch "
            "gives; turn tracking off for the fastest runtime installed here)."
            if track
            else " (the fastest installed here for plain detections)."
        ),
    ]
    if result.note:
        lines.append(f"⚠️ {result.note}")
    return "  \n".join(lines)


def _frame_table(dets: Detections, sigma: np.ndarray | None) -> pd.DataFrame:
    rows = []
    for i in range(len(dets)):
        tid = None if dets.track_id is None else int(dets.track_id[i])
        row = {
            "#": i,
            "track": "" if tid is None or tid < 0 else f"#{tid}",
            "class": dets.names[i],
            "score": round(float(dets.scores[i]), 4),
            **{k: round(float(v), 1) for k, v in zip(("x1", "y1", "x2", "y2"), dets.boxes[i])},
        }
        if sigma is not None and len(sigma) == len(dets):
            row.update(
                {
                    f"σ {e} (px)": round(float(v), 2)
                    for e, v in zip(("left", "top", "right", "bottom"), sigma[i])
                }
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["#", "track", "class", "score"])


def build(state: AppState, controls: Controls) -> VideoTab:
    """The Video tab (with the live webcam); it reads the Detect tab's threshold, input size,
    model and detection limit, and "open this frame" sets the Detect tab's image."""
    tab = VideoTab(state)
    with gr.Tab("Video", id="video"):
        gr.Markdown(TEXT, elem_classes="dfine-note")
        gr.Markdown(tab.caps.markdown(), elem_id="video-caps")
        with gr.Row():
            with gr.Column(scale=1):
                video_in = gr.Video(
                    sources=["upload"],
                    include_audio=True,
                    label="Video",
                    height=300,
                    elem_id="video-input",
                )
                with gr.Row():
                    stride = gr.Slider(
                        1,
                        30,
                        value=1,
                        step=1,
                        label="Stride (every N-th frame)",
                        elem_id="video-stride",
                    )
                    track = gr.Checkbox(
                        value=True, label="Track objects (ByteTrack)", elem_id="video-track-on"
                    )
                run = gr.Button("Run on the video", variant="primary", elem_id="video-button")
                gr.Markdown(
                    "*Uses the model, input size, threshold, detection limit and letterbox of "
                    "the Detect tab.*",
                    elem_classes="dfine-note",
                )
            with gr.Column(scale=1):
                video_out = gr.Video(label="Annotated video", height=300, elem_id="video-output")
                summary = gr.Markdown(elem_id="video-summary")
                json_file = gr.File(
                    label="Detections of every frame (JSON)", height=90, elem_id="video-json"
                )
        run_id = gr.Textbox(visible=False, elem_id="video-run-id")
        # the runs this session made: their folders go when the session ends
        session_runs = gr.State([], delete_callback=tab.runs.release)
        with gr.Row():
            position = gr.Slider(
                0,
                1,
                value=0,
                step=1,
                label="Frame (processed frames, 0-based)",
                elem_id="video-frame",
                scale=4,
            )
            open_btn = gr.Button(
                "Open this frame in the analysis tabs", scale=1, elem_id="video-open-frame"
            )
        with gr.Row():
            frame_img = gr.Image(
                label="This frame's detections",
                height=360,
                interactive=False,
                elem_id="video-frame-image",
            )
            with gr.Column():
                caption = gr.Markdown(elem_id="video-frame-caption")
                frame_table = gr.Dataframe(
                    label="Detections of this frame", interactive=False, elem_id="video-frame-table"
                )
        gr.Markdown("#### Track view: one object's uncertainty through time")
        with gr.Row():
            track_pick = gr.Dropdown(
                choices=[], label="Track", allow_custom_value=True, elem_id="video-track", scale=3
            )
            track_btn = gr.Button("Show the track", scale=1)
        track_text = gr.Markdown(elem_id="video-track-summary")
        track_plot = gr.Plot(label="Track over time", elem_id="video-track-plot")
        with gr.Accordion("Track table", open=False):
            track_table = gr.Dataframe(label="Track frames", interactive=False)
        with gr.Accordion("Live webcam", open=False):
            gr.Markdown(WEBCAM_TEXT, elem_classes="dfine-note")
            with gr.Row():
                cam = gr.Image(
                    sources=["webcam"],
                    streaming=True,
                    type="numpy",
                    label="Webcam",
                    elem_id="webcam-input",
                )
                cam_out = gr.Image(label="Detections", interactive=False, elem_id="webcam-output")
            cam_fps = gr.Markdown(elem_id="webcam-fps")
            cam_times = gr.State([])

    shared = [controls.threshold, controls.size, controls.model, controls.max_detections]
    frame_outputs = [frame_img, frame_table, caption]
    track_outputs = [track_plot, track_table, track_text]
    event = run.click(
        tab.video,
        inputs=[video_in, *shared, stride, track, controls.letterbox, session_runs],
        outputs=[video_out, json_file, summary, position, track_pick, run_id, session_runs],
        api_name="video",
        concurrency_id=QUEUE_ID,
        concurrency_limit=1,
    )
    # the public endpoints first, so that they keep their names (a private event named
    # after the same function would otherwise take "track" and leave "track_1")
    position.release(
        tab.frame, inputs=[run_id, position], outputs=frame_outputs, api_name="video_frame"
    )
    gr.on(
        [track_btn.click, track_pick.input],
        tab.track,
        inputs=[run_id, track_pick],
        outputs=track_outputs,
        api_name="track",
    )
    event.success(
        tab.frame,
        inputs=[run_id, position],
        outputs=frame_outputs,
        api_name="video_first_frame",
        api_visibility="private",
    ).success(
        quietly(tab.track, 3),
        inputs=[run_id, track_pick],
        outputs=track_outputs,
        api_name="video_first_track",
        api_visibility="private",
    )
    position.change(
        quietly(tab.frame, 3),
        inputs=[run_id, position],
        outputs=frame_outputs,
        api_name="video_frame_preview",
        api_visibility="private",
    )
    opened = open_btn.click(
        tab.open_frame,
        inputs=[run_id, position],
        outputs=[controls.image, controls.tabs],
        api_name="video_open_frame",
        api_visibility="private",
    )
    controls.replaced(opened.success, detect=True)  # Detect describes the opened frame
    opened.success(
        None,
        js="() => { const b = [...document.querySelectorAll('button[role=tab]')]"
        ".find(x => x.textContent.trim() === 'Refinement'); if (b) b.click(); }",
    )
    cam.stream(
        tab.webcam,
        inputs=[
            cam,
            controls.threshold,
            controls.size,
            controls.model,
            cam_times,
            controls.letterbox,
        ],
        outputs=[cam_out, cam_fps, cam_times],
        stream_every=0.1,
        time_limit=tab.caps.webcam_seconds,
        # Frames are dropped by Gradio's stream connection itself: the browser posts every
        # frame to the one open event, each post replaces the event's input, and the handler
        # takes the newest when it is free. (trigger_mode="always_last" would defer every
        # frame until the stream ends: the browser sends one frame and then waits.)
        concurrency_id=QUEUE_ID,
        concurrency_limit=1,
        api_name="webcam",
    )
    return tab
