"""Seconds from upload to answer for the app's main endpoints, as a user of the running app sees.

Starts ``python app.py`` (the default model unless ``--model``) on 127.0.0.1 in a subprocess and
calls it through ``gradio_client``. Every call uploads an image, so the times include upload,
decoding, the network, analysis, figures and the download of the outputs. The app runs the
network once per (image, model, input size) and keeps the result for the other tabs, so two
cases are timed:

- a new image (one pixel changed per call, so nothing is cached): ``/detect`` (upload to
  detections) and ``/trace`` (upload straight to the full layer-by-layer trace);
- the same image after ``/detect`` (the usual path through the tabs): ``/trace`` and
  ``/distributions``, which reuse the forward pass.

The very first call after start-up is reported apart.

    python benchmarks/app_latency.py [--repeats 10] [--out benchmarks/results/app_cpu.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [
    ROOT / "assets" / "examples" / "synth" / "000001.jpg",
    ROOT / "assets" / "examples" / "coffee.jpg",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str | None, threads: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(ROOT / "app.py")] + (["--model", model] if model else [])
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("app.py did not start within 180 s")


def _variants(path: Path, folder: Path, count: int) -> list[Path]:
    """``count`` copies of an image, each with its top-left pixel changed (new bytes, so the
    app cannot reuse an earlier result)."""
    image = np.asarray(Image.open(path).convert("RGB")).copy()
    out = []
    for i in range(count):
        image[0, 0] = (i * 37 % 256, i * 11 % 256, i % 256)
        target = folder / f"{path.stem}_{i}.png"
        Image.fromarray(image).save(target)
        out.append(target)
    return out


def _median(times: list[float]) -> float:
    return statistics.median(times)


def _time(client: Client, *args, api_name: str) -> float:
    start = time.perf_counter()
    client.submit(*args, api_name=api_name).result(timeout=300)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the app's default)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=320, help="input size (px, square)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--stage", type=int, default=4, help="trace stage to draw (4: an N model's last layer)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write a Markdown table here")
    args = parser.parse_args()

    start = time.perf_counter()
    proc, url = _start(args.model, args.threads)
    startup = time.perf_counter() - start
    rows = []
    try:
        client = Client(url, verbose=False)
        shared = (args.threshold, args.size, "default", 300)
        endpoints = {
            "/detect": (),
            "/trace": ([], args.stage),
            "/distributions": ("0", 1.5, False),
        }

        def call(name: str, image: Path) -> float:
            return _time(client, handle_file(image), *shared, *endpoints[name], api_name=name)

        with tempfile.TemporaryDirectory() as tmp:
            variants = _variants(IMAGES[0], Path(tmp), 1)
            first = call("/detect", variants[0])
            rows.append((IMAGES[0].name, "/detect", "first call after start-up", [first]))
            for path in IMAGES:
                fresh = _variants(path, Path(tmp), 2 * args.repeats)
                for k, name in enumerate(("/detect", "/trace")):
                    times = [call(name, v) for v in fresh[k::2]]
                    rows.append((path.name, name, "new image", times))
                call("/detect", path)
                for name in ("/trace", "/distributions"):
                    times = [call(name, path) for _ in range(args.repeats)]
                    rows.append((path.name, name, "after /detect", times))
                for row in rows[-4:]:
                    print(f"{row[0]:12s} {row[1]:15s} {row[2]:26s} median {_median(row[3]):.3f}s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    lines = [
        "# App latency (seconds from upload to answer, `gradio_client` on 127.0.0.1)",
        "",
        f"Model: {args.model or 'the default (assets/dfine_n_synth.safetensors)'}; input "
        f"{args.size}², threshold {args.threshold}; {args.threads} threads; "
        f"{platform.machine()} CPU, {os.cpu_count()} cores; "
        f"`python app.py` took {startup:.1f} s until it accepted connections.",
        "",
        "| image | endpoint | case | calls | median s | p90 s |",
        "|---|---|---|---|---|---|",
    ]
    for image, name, case, times in rows:
        lines.append(
            f"| {image} | `{name}` | {case} | {len(times)} | {_median(times):.3f} "
            f"| {np.percentile(times, 90):.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
