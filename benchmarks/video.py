"""End-to-end video throughput: decode + model + track + draw + encode, frames per second.

    python benchmarks/video.py --frames 100 --rounds 2 --out benchmarks/results/video_cpu.md
    python benchmarks/video.py --frames 20 --rounds 1 --sizes 320 --batch 1 4  # frames per pass

The bundled demo model (D-FINE-N, synthetic shapes) runs on generated clips of moving shapes
(``dfine.data.synth_video``) at 320x320 and 640x640 input, on the torch backend (deployed) and
on OpenVINO (the fastest CPU backend in benchmarks/results/backends_cpu.md) from an ONNX
export, with and without ByteTrack. Every variant goes through ``dfine.video.annotate_video``,
the function behind ``dfine predict VIDEO``. Variants are interleaved round by round (the
machine is shared, so absolute numbers drift; the ratios within a round are the robust
part), and each round also times every stage alone to show where the time goes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfine.data.synth_video import write_synth_video  # noqa: E402
from dfine.export import export_onnx  # noqa: E402
from dfine.predict import Detector  # noqa: E402
from dfine.video import FrameReader, Tracker, VideoWriter, annotate_video  # noqa: E402

DEMO = ROOT / "assets" / "dfine_n_synth.safetensors"


def _detectors(
    work: Path, sizes: list[int], threads: int, batches: list[int]
) -> dict[tuple[str, int], Detector]:
    dets = {}
    for size in sizes:
        dets["torch", size] = Detector(DEMO, size=size)
        onnx = work / f"demo_{size}.onnx"
        batch = 1 if batches == [1] else "dynamic"  # what `dfine predict --backend openvino` uses
        export_onnx(DEMO, onnx, size=(size, size), batch=batch, check_parity=False)
        dets["openvino", size] = Detector(onnx, backend="openvino", threads=threads)
    return dets


def _stages(clip: Path, detector: Detector, frames: int, work: Path) -> dict[str, float]:
    """Milliseconds per frame of each stage run alone (no overlap)."""
    t = time.perf_counter()
    with FrameReader(clip, max_frames=frames) as reader:
        rgbs = [f.rgb for f in reader]
    decode = (time.perf_counter() - t) / len(rgbs)
    t = time.perf_counter()
    results = [detector(rgb, threshold=0.1) for rgb in rgbs]
    model = (time.perf_counter() - t) / len(rgbs)
    tracker = Tracker(25.0, threshold=0.5)
    t = time.perf_counter()
    results = [tracker.update(d, i / 25).filter(0.5) for i, d in enumerate(results)]
    track = (time.perf_counter() - t) / len(rgbs)
    t = time.perf_counter()
    drawn = [np.asarray(d.plot()) for d in results]
    draw = (time.perf_counter() - t) / len(rgbs)
    h, w = drawn[0].shape[:2]
    t = time.perf_counter()
    with VideoWriter(work / "encode_only.webm", 25.0, (w, h)) as writer:
        for frame in drawn:
            writer.write(frame)
    encode = (time.perf_counter() - t) / len(rgbs)
    return {k: v * 1000 for k, v in zip(("decode", "model", "track", "draw", "encode"),
                                         (decode, model, track, draw, encode))}  # fmt: skip


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # not on this platform
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100, help="frames per clip (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[1],
        help="frames per forward pass to compare (default 1; `dfine predict` uses 4)",
    )
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.load_start = _load()
    work = Path(tempfile.mkdtemp(prefix="dfine-video-bench-"))
    clips = {s: write_synth_video(work / f"clip_{s}.webm", args.frames, (s, s))[0]
             for s in args.sizes}  # fmt: skip
    detectors = _detectors(work, args.sizes, args.threads, args.batch)
    variants = [
        (b, s, tr, n)
        for s in args.sizes
        for b in ("torch", "openvino")
        for tr in (True, False)
        for n in args.batch
    ]
    for (_, s), det in detectors.items():  # warm-up
        for f in FrameReader(clips[s], max_frames=3):
            det(f.rgb)
    fps: dict[tuple, list[float]] = {v: [] for v in variants}
    model_ms: dict[tuple, list[float]] = {v: [] for v in variants}
    stages: dict[tuple, list[dict]] = {k: [] for k in detectors}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            backend, size, track, batch = v
            run = annotate_video(detectors[backend, size], clips[size], work / "out.webm",
                                 track=track, max_frames=args.frames, batch=batch)  # fmt: skip
            fps[v].append(run.fps)
            model_ms[v].append(statistics.mean(
                d.speed["preprocess"] + d.speed["inference"] + d.speed["postprocess"]
                for d in run.frames))  # fmt: skip
            print(f"round {r + 1}: {backend:8s} {size} track={track!s:5s} batch={batch} "
                  f"{run.fps:6.1f} fps", flush=True)  # fmt: skip
        for key, det in detectors.items():
            stages[key].append(_stages(clips[key[1]], det, args.frames, work))
        text = _report(args, variants, fps, model_ms, stages, rounds=r + 1)
        if args.out:  # after every round, so a stopped run keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
    print(text)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _report(args, variants, fps, model_ms, stages, rounds: int) -> str:
    med = statistics.median
    lines = [
        "# Video throughput, end to end (decode + model + track + draw + encode)",
        "",
        f"- date: {dt.date.today()}; torch {torch.__version__}; {platform.machine()}; "
        f"{args.threads} threads; {args.frames} frames per clip, {rounds} interleaved round(s)",
        "- model: the bundled demo model (D-FINE-N, 8 synthetic-shape classes) on generated "
        "clips of 3 moving shapes (`dfine data synth-video`), input = clip size",
        "- `dfine.video.annotate_video` (what `dfine predict VIDEO` runs): decoding in a worker "
        "thread, VP8 WebM encoding in another; torch = deployed model, openvino = ONNX export "
        "(in-graph postprocessing), fp32",
        "- the machine is shared with other jobs: absolute figures drift between runs; compare "
        "within a table (ratio columns)",
        f"- load average (1/5/15 min) at the start: {args.load_start}; when this table was "
        f"written: {_load()} ({os.cpu_count()} CPUs)",
        "",
        "| backend | input | tracking | batch | frames/s (median) | per round | ms/frame "
        "| model ms/frame | vs torch, same input, tracking and batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        backend, size, track, batch = v
        ref = med(fps["torch", size, track, batch])
        lines.append(
            f"| {backend} | {size}² | {'ByteTrack' if track else 'off'} | {batch} "
            f"| {med(fps[v]):.1f} "
            f"| {' / '.join(f'{x:.1f}' for x in fps[v])} | {1000 / med(fps[v]):.1f} "
            f"| {med(model_ms[v]):.1f} | {med(fps[v]) / ref:.2f}x |"
        )
    lines += [
        "",
        "## Where the time goes: each stage alone, ms per frame (median of rounds)",
        "",
        "| backend | input | decode | model (pre+infer+post) | track | draw | encode (VP8) "
        "| sum | end-to-end with tracking |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (backend, size), rounds in stages.items():
        st = {k: med(r[k] for r in rounds) for k in rounds[0]}
        total = sum(st.values())
        e2e = 1000 / med(fps[backend, size, True, args.batch[0]])
        lines.append(
            f"| {backend} | {size}² | {st['decode']:.1f} | {st['model']:.1f} | {st['track']:.2f} "
            f"| {st['draw']:.1f} | {st['encode']:.1f} | {total:.1f} | {e2e:.1f} |"
        )
    lines += [
        "",
        "End-to-end below the sum = decoding and encoding overlap the model (their threads); "
        "above it = the threads compete for the same cores.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
