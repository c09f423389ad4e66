"""Issue #7: the app under load, on 127.0.0.1 only, every loop bounded in count and time.

- ``app.py`` is started as its own process (its real queue: 2 at once, 20 waiting) and 20
  concurrent ``/detect`` requests (19 different images and, among them, one corrupt image)
  are sent with gradio_client from a bounded thread pool: every good request gets the
  detections of its own image, the bad one a readable error, and the server's peak memory
  (``VmHWM`` of its process) stays bounded. 20 fit the queue even if none has started.
- An app built with a small queue (1 at a time, 4 waiting) answers requests beyond that at
  once with gradio's "queue is full" error instead of hanging, and serves the accepted ones.

The figures (requests, answered, p50/p90 latency, peak RSS) are printed (``pytest -s``),
recorded as test properties and written to ``test-artifacts/load_test.json``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the app needs gradio")
client_lib = pytest.importorskip("gradio_client", reason="the load test needs gradio_client")

import httpx  # noqa: E402  (a gradio dependency)
from gradio_client.utils import QueueError  # noqa: E402

from dfine.predict import Detector  # noqa: E402
from tests.app_util import free_port, serve  # noqa: E402

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "dfine_n_perturbed_random_official.pth"
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.jpg"))
ARTIFACTS = ROOT / "test-artifacts"
SIZE = 640  # the app's default input size
THRESHOLD = 0.0494  # the fixture's scores lie in 0.048..0.050: this keeps a handful
MAX_DETECTIONS = 300
REQUESTS = 20  # sent at once: 19 good images and 1 corrupt one (the queue holds 2 + 20)
GOOD = REQUESTS - 1
TIMEOUT = 180  # seconds, any single request
START_TIMEOUT = 180  # seconds, for the server to come up
PEAK_RSS_LIMIT = 3 * 2**30  # bytes: the server's peak resident memory, whole run
GROWTH_LIMIT = 1536 * 2**20  # bytes: peak minus the warmed-up server's resident memory


def _unused():
    pass


def _proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak resident set) of a process, in bytes (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _images(folder: Path, count: int) -> list[tuple[Path, tuple[int, int]]]:
    """``count`` different images of different sizes (crops of the example photos), so a
    response given to the wrong request would show."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        with Image.open(EXAMPLES[i % len(EXAMPLES)]) as photo:
            photo = photo.convert("RGB")
            w, h = photo.size
            box = (i * 3, i * 2, w - i * 5, h - i * 4)
            crop = photo.crop(box)
        path = folder / f"load_{i:02d}.{'png' if i % 4 == 3 else 'jpg'}"
        crop.save(path)
        out.append((path, crop.size))
    return out


def _corrupt_jpeg(folder: Path) -> Path:
    data = bytearray(EXAMPLES[0].read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof : sof + 12] = bytes(range(100, 112))
    path = folder / "corrupt_among_them.jpg"
    path.write_bytes(bytes(data))
    return path


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def _matches(rows: list[list], expected) -> bool:
    """Every row of the server's table is a detection of the local run (same class, score
    and box up to rounding); ties in score may be ordered differently, so rows are matched
    to the nearest local detection rather than by index."""
    if len(rows) != len(expected):
        return False
    if not rows:
        return True
    got = np.array([row[3:] for row in rows], dtype=np.float64)
    want = expected.boxes.astype(np.float64)
    distance = np.abs(got[:, None, :] - want[None, :, :]).max(-1)
    nearest = distance.argmin(1)
    names = np.array(expected.names, dtype=object)
    return bool(
        (distance.min(1) < 0.1).all()
        and (names[nearest] == np.array([row[1] for row in rows], dtype=object)).all()
        and (np.abs(expected.scores[nearest] - [row[2] for row in rows]) < 1e-3).all()
    )


# ------------------------------------------------------------------ app.py as its own process
@pytest.fixture(scope="module")
def app_process(tmp_path_factory):
    """``python app.py`` on 127.0.0.1 with the fixture model; yields ``(url, pid)``."""
    log_path = tmp_path_factory.mktemp("app_log") / "server.log"
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    url = f"http://127.0.0.1:{port}/"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--model", str(FIXTURE)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start in time"
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, proc.pid, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _detect(client, path: Path) -> tuple[float, object]:
    """``(seconds, outputs or the exception)`` of one ``/detect`` request."""
    start = time.perf_counter()
    try:
        job = client.submit(
            client_lib.handle_file(path), THRESHOLD, SIZE, "default", MAX_DETECTIONS,
            api_name="/detect",
        )  # fmt: skip
        result = job.result(timeout=TIMEOUT)
    except Exception as e:  # collected and checked by the test
        result = e
    return time.perf_counter() - start, result


def test_twenty_concurrent_requests_one_of_them_bad(app_process, tmp_path, record_property):
    url, pid, log_path = app_process
    images = _images(tmp_path / "images", GOOD)
    corrupt = _corrupt_jpeg(tmp_path)
    torch.set_num_threads(1)
    local = Detector(str(FIXTURE), threshold=THRESHOLD, size=SIZE)
    expected = [local(path) for path, _ in images]

    client = client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT})
    warm_seconds, warm = _detect(client, EXAMPLES[0])  # loads nothing new: the model is ready
    assert not isinstance(warm, Exception), warm
    before = _proc_status(pid)

    paths = [p for p, _ in images]
    paths.insert(GOOD // 2, corrupt)  # the bad one in the middle of the good ones
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = [pool.submit(_detect, client, p) for p in paths]
        _, pending = concurrent.futures.wait(futures, timeout=TIMEOUT + 60)
    wall = time.perf_counter() - start
    assert not pending, f"{len(pending)} requests hung"
    outcomes = dict(zip(paths, (f.result() for f in futures)))
    after = _proc_status(pid)

    # the bad request: a readable error naming the file
    seconds, error = outcomes.pop(corrupt)
    assert isinstance(error, client_lib.exceptions.AppError), error
    assert "corrupt_among_them.jpg" in str(error) and "truncated or corrupt JPEG" in str(error)
    assert "Traceback" not in str(error)

    # every good request: the detections of its own image
    latencies = []
    for (path, (width, height)), want in zip(images, expected):
        seconds, result = outcomes[path]
        assert not isinstance(result, Exception), f"{path.name}: {result!r}"
        latencies.append(seconds)
        annotated, table, json_path, summary = result
        record = json.loads(Path(json_path).read_text())
        assert record["image_size"] == {"width": width, "height": height}, path.name
        assert f"image {width}×{height} px" in summary
        with Image.open(annotated) as drawn:
            assert drawn.size == (width, height)
        assert _matches(table["data"], want), path.name
    answered = len(latencies)

    # the server is still fine afterwards
    _, again = _detect(client, images[0][0])
    assert not isinstance(again, Exception) and _matches(again[1]["data"], expected[0])

    figures = {
        "requests": len(paths),
        "good_requests": GOOD,
        "answered_correctly": answered,
        "answered_in_all": answered + 1,
        "bad_request_refused_readably": True,
        "wall_s": round(wall, 2),
        "latency_p50_s": round(_percentile(latencies, 50), 2),
        "latency_p90_s": round(_percentile(latencies, 90), 2),
        "latency_max_s": round(max(latencies), 2),
        "warm_request_s": round(warm_seconds, 2),
        "server_rss_before_mib": round(before["VmRSS"] / 2**20),
        "server_peak_rss_mib": round(after["VmHWM"] / 2**20),
        "server_rss_after_mib": round(after["VmRSS"] / 2**20),
        "input_size": SIZE,
        "queue": "app.py: default_concurrency_limit=2, max_size=20",
    }
    _report("concurrent", figures, record_property)
    assert answered == GOOD and len(paths) == REQUESTS
    assert after["VmHWM"] < PEAK_RSS_LIMIT, figures
    assert after["VmHWM"] - before["VmRSS"] < GROWTH_LIMIT, figures
    assert "Traceback" not in "".join(str(o[1]) for o in outcomes.values())
    assert "Queue is full" not in log_path.read_text()


def _report(name: str, figures: dict, record_property) -> None:
    for key, value in figures.items():
        record_property(key, value)
    print(f"\nload test ({name}): " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "load_test.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    saved[name] = figures
    path.write_text(json.dumps(saved, indent=2) + "\n")


# ------------------------------------------------------------------ a small queue fills up
QUEUE_MAX = 4


@pytest.fixture(scope="module")
def small_queue_app():
    """The app with 1 request at a time and 4 waiting; requests are held at a gate inside
    the handler until the test opens it. Yields ``(demo, url, gate, entered)``."""
    from app import build_demo

    demo = build_demo(str(FIXTURE))
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX)
    handlers = demo.dfine_state
    gate, entered = threading.Event(), threading.Event()
    real_get = handlers.cache.get

    def gated_get(*args, **kwargs):
        entered.set()
        assert gate.wait(timeout=120), "the test never opened the gate"
        return real_get(*args, **kwargs)

    handlers.cache.get = gated_get
    with serve(demo) as url:
        try:
            yield demo, url, gate, entered
        finally:
            gate.set()


def _queued(demo) -> int:
    return len(demo._queue)


def test_requests_beyond_the_queue_are_told_it_is_full(small_queue_app, tmp_path, record_property):
    demo, url, gate, entered = small_queue_app
    torch.set_num_threads(1)
    client = client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT})
    images = [p for p, _ in _images(tmp_path / "images", 10)]

    def submit(path: Path):
        return client.submit(
            client_lib.handle_file(path), THRESHOLD, SIZE, "default", MAX_DETECTIONS,
            api_name="/detect",
        )  # fmt: skip

    running = submit(images[0])
    assert entered.wait(timeout=60), "the first request never started"
    waiting = [submit(p) for p in images[1 : 1 + QUEUE_MAX]]
    deadline = time.monotonic() + 60
    while _queued(demo) < QUEUE_MAX:
        assert time.monotonic() < deadline, f"only {_queued(demo)} requests queued"
        time.sleep(0.05)

    # the queue is full: further requests are refused at once, not left hanging
    refused, seconds = [], []
    for path in images[1 + QUEUE_MAX :]:
        start = time.perf_counter()
        with pytest.raises(QueueError, match="Queue is full") as err:
            submit(path).result(timeout=30)
        seconds.append(time.perf_counter() - start)
        refused.append(str(err.value))
    # the server says why, in words, with an HTTP 503 (what a browser or script sees)
    join = httpx.post(
        url.rstrip("/") + "/gradio_api/queue/join",
        json={"data": [None, 0.5, SIZE, "default", 1], "fn_index": _fn_index(demo, "detect"),
              "session_hash": "robustload01"},
        timeout=30,
    )  # fmt: skip
    assert join.status_code == 503
    assert re.search(r"Queue is full\. Max size is 4", join.text), join.text

    gate.set()  # the accepted requests now all complete, correctly
    results = [job.result(timeout=TIMEOUT) for job in [running, *waiting]]
    for path, result in zip(images[: 1 + QUEUE_MAX], results, strict=True):
        with Image.open(path) as im:
            size = im.size
        record = json.loads(Path(result[2]).read_text())
        assert record["image_size"] == {"width": size[0], "height": size[1]}, path.name
    # and the server takes new work once the queue has drained
    after = submit(images[-1]).result(timeout=TIMEOUT)
    assert len(after[1]["data"]) > 0

    figures = {
        "queue": f"default_concurrency_limit=1, max_size={QUEUE_MAX}",
        "accepted": 1 + QUEUE_MAX,
        "refused": len(refused),
        "refusal_max_s": round(max(seconds), 2),
        "client_message": refused[0],
        "server_message": join.json().get("detail", join.text)[:80]
        if join.headers.get("content-type", "").startswith("application/json")
        else join.text[:80],
    }
    _report("queue_full", figures, record_property)
    assert len(refused) == len(images) - 1 - QUEUE_MAX
    assert max(seconds) < 10


def _fn_index(demo, api_name: str) -> int:
    for index, fn in demo.fns.items():
        if getattr(fn, "api_name", None) == api_name:
            return index
    raise AssertionError(f"no /{api_name} endpoint")


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_images_helper_gives_distinct_sizes(tmp_path):
    sizes = [size for _, size in _images(tmp_path, GOOD)]
    assert len(set(sizes)) == GOOD
