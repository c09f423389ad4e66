"""Seconds from upload to answer for the app's main endpoints, as a user of the running app sees.

Starts ``python app.py`` (the default model unless ``--model``) on 127.0.0.1 in a subprocess,
then for every example image calls ``/detect``, ``/trace`` (all stages of the top 5
detections) and ``/distributions`` (detection 0, all layers) through ``gradio_client``. Every
call uploads the image again, so the time includes upload, decoding, the network, analysis,
figure building and the download of the outputs. The first call of each endpoint is reported
apart (cold) from the median and p90 of the next ``--repeats`` calls.

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
import time
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

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
        calls = {
            "/detect": lambda img: _time(client, img, *shared, api_name="/detect"),
            "/trace": lambda img: _time(client, img, *shared, [], args.stage, api_name="/trace"),
            "/distributions": lambda img: _time(
                client, img, *shared, "0", 1.5, False, api_name="/distributions"
            ),
        }
        for path in IMAGES:
            for name, fn in calls.items():
                cold = fn(handle_file(path))
                warm = [fn(handle_file(path)) for _ in range(args.repeats)]
                rows.append(
                    (path.name, name, cold, statistics.median(warm), np.percentile(warm, 90))
                )
                print(f"{path.name:12s} {name:15s} cold {cold:.3f}s  median {rows[-1][3]:.3f}s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    lines = [
        "# App latency (seconds from upload to answer, `gradio_client` on 127.0.0.1)",
        "",
        f"Model: {args.model or 'the default (assets/dfine_n_synth.safetensors)'}; input "
        f"{args.size}², threshold {args.threshold}; {args.threads} threads; "
        f"{platform.machine()} CPU, {os.cpu_count()} cores; {args.repeats} warm calls each. "
        f"`python app.py` took {startup:.1f} s until it accepted connections.",
        "",
        "| image | endpoint | first call | median | p90 |",
        "|---|---|---|---|---|",
    ]
    for image, name, cold, med, p90 in rows:
        lines.append(f"| {image} | `{name}` | {cold:.3f} | {med:.3f} | {p90:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
