"""The Video tab in a real browser (Debian's Chromium via Playwright): upload a generated
clip, run it, the annotated video plays, the frame slider changes the shown detections, and
"open this frame in the analysis tabs" fills the Refinement tab; the live webcam, fed by
Chromium's fake camera with the synthetic clip, streams frames with detections and drops the
frames that arrive while the model is busy, and another user's video waits for the stream."""

from __future__ import annotations

import functools
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfine.optional import chromium_path

CHROMIUM = chromium_path()  # None: every test here is skipped (tests/conftest.py)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
client_lib = pytest.importorskip("gradio_client")

from gradio_client.utils import Status  # noqa: E402

from app.gpu import plain_backend  # noqa: E402
from app.tabs.video import VideoTab  # noqa: E402
from dfine.backends.base import RUNTIME_TITLES  # noqa: E402
from dfine.data.synth_video import render_clip, write_synth_video  # noqa: E402
from tests.app_util import DEMO, serve  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 120_000
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


class WebcamCalls:
    """Wraps ``VideoTab.webcam`` (before the app is built): counts the frames it answers and,
    with ``delay`` set, makes the model look slow."""

    def __init__(self) -> None:
        self.count = 0
        self.delay = 0.0
        self.lock = threading.Lock()

    def wrap(self, handler):
        @functools.wraps(handler)
        def webcam(*args, **kwargs):
            with self.lock:
                self.count += 1
            time.sleep(self.delay)
            return handler(*args, **kwargs)

        return webcam


CALLS = WebcamCalls()


@pytest.fixture(scope="module")
def url(module_monkeypatch):
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    from app import build_demo

    module_monkeypatch.setenv("DFINE_VIDEO_MAX_FRAMES", "5")  # the tab reads it when built
    module_monkeypatch.setattr(VideoTab, "webcam", CALLS.wrap(VideoTab.webcam))
    demo = build_demo(str(DEMO))
    demo.queue(default_concurrency_limit=2, max_size=20)
    with serve(demo) as address:
        yield address


def _table_text(page) -> str:
    return page.locator("#video-frame-table").inner_text()


def test_video_tab_plays_slides_and_opens_in_analysis(url, tmp_path):
    clip, _ = write_synth_video(tmp_path / "moving.webm", 8)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        try:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Video").click()
            assert "5 processed frames" in page.locator("#video-caps").inner_text()
            page.locator("#video-input input[type=file]").set_input_files(str(clip))
            page.wait_for_selector("#video-input video", state="attached")
            page.click("#video-button")
            # (the progress bar also says "frames/s": wait for the summary's own words)
            page.locator("#video-summary").get_by_text("processed of").first.wait_for()
            assert "5 frames" in page.locator("#video-summary").inner_text()

            # the annotated video plays in Chromium
            page.wait_for_selector("#video-output video", state="attached")
            page.wait_for_function(
                "() => { const v = document.querySelector('#video-output video');"
                " return v && v.readyState >= 2 && v.duration > 0; }",
                timeout=WAIT_MS,
            )
            duration = page.evaluate("document.querySelector('#video-output video').duration")
            assert duration == pytest.approx(5 / 25, abs=0.08)

            # the frame slider changes the detections shown
            caption = page.locator("#video-frame-caption")
            caption.get_by_text("Frame 0 ").wait_for()
            first = _table_text(page)
            number = page.locator("#video-frame input[type=number]")
            number.fill("4")
            number.press("Enter")
            caption.get_by_text("Frame 4 ").wait_for()
            page.wait_for_function(
                f"() => document.querySelector('#video-frame-table').innerText !== {first!r}",
                timeout=WAIT_MS,
            )
            assert _table_text(page) != first
            page.wait_for_selector("#video-frame-image img", state="visible")

            # the track view: σ of the four edges, score and box size over time
            page.locator("#video-track-summary").get_by_text("Track #").first.wait_for()
            plot = page.locator("#video-track-plot .js-plotly-plot").first
            plot.wait_for()
            names = plot.evaluate("el => el.data.map(t => t.name)")
            assert names[:5] == ["σ left", "σ top", "σ right", "σ bottom", "score"]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "video_01_tab.png"), full_page=True)

            # open that frame in the analysis tabs: Refinement is shown and filled
            page.click("#video-open-frame")
            page.get_by_role("tab", name="Refinement", selected=True).wait_for()
            page.wait_for_selector("#refinement-overlay img", state="visible")
            page.locator("#refinement-plot .js-plotly-plot").first.wait_for()
            src = page.locator("#input-image img").first.get_attribute("src")
            assert "frame4" in src  # the Detect tab now holds that frame
            page.screenshot(path=str(ARTIFACTS / "video_02_refinement.png"), full_page=True)
        finally:
            browser.close()


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """RGB frames as a raw YUV4MPEG2 file, the format Chromium's fake camera plays (looped)."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def _rate(text: str) -> float:
    """The rate R of the webcam status line "**R frames/s** shown · ..."."""
    found = re.search(r"([0-9.]+) frames/s shown", text)
    assert found, text
    return float(found.group(1))


def test_webcam_streams_detections_and_drops_frames(url, tmp_path):
    frames, _, _ = render_clip(25, 320, 320, num_objects=3, seed=0)
    camera = write_y4m(tmp_path / "camera.y4m", frames)
    args = [
        *ARGS,
        "--use-fake-ui-for-media-stream",  # allow the camera without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    posts: list[float] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.on(
            "request",
            lambda r: (
                posts.append(time.monotonic())
                if r.method == "POST" and "/stream/" in r.url and not r.url.endswith("/close")
                else None
            ),
        )
        try:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Video").click()
            page.get_by_text("Live webcam").click()
            page.get_by_text("Click to Access Webcam").click()
            page.wait_for_function(
                "() => { const v = document.querySelector('#webcam-input video');"
                " return v && v.readyState >= 2 && v.videoWidth === 320; }"
            )
            CALLS.count, CALLS.delay = 0, 0.0
            page.locator("#webcam-input button[aria-label='capture photo']").click()

            # the stream runs: the measured rate appears and the detections are drawn
            status = page.locator("#webcam-fps")
            page.wait_for_function(
                "() => { const m = document.querySelector('#webcam-fps').innerText"
                ".match(/([0-9.]+) frames\\/s shown/); return m && parseFloat(m[1]) > 0; }"
            )
            text = status.inner_text()
            assert _rate(text) > 0 and "ms/frame" in text, text
            runtime = RUNTIME_TITLES[plain_backend(str(DEMO))]  # the fastest installed here
            assert f"ms/frame on {runtime} f32" in text, text
            assert all(n in text for n in ("green triangle", "purple ring", "orange cross")), text
            page.wait_for_selector("#webcam-output img", state="visible")
            calls_before = CALLS.count
            for _ in range(2):  # the output image keeps updating, from newly answered frames
                shown = page.locator("#webcam-output img").get_attribute("src")
                page.wait_for_function(
                    f"() => document.querySelector('#webcam-output img').src !== {shown!r}"
                )
            # ... from newly answered frames: the handler is called again (polled: under load
            # the image can change before the next call is counted)
            deadline = time.monotonic() + WAIT_MS / 1000
            while CALLS.count <= calls_before and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            assert CALLS.count > calls_before
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "video_03_webcam.png"), full_page=True)

            # a video run from another user waits: the webcam holds the video queue's one slot
            clip, _ = write_synth_video(tmp_path / "other_user.webm", 5)
            client = client_lib.Client(url, verbose=False)
            job = client.submit(client_lib.handle_file(str(clip)), 0.5, 320, "default", 25, 1,
                                False, api_name="/video")  # fmt: skip

            # a slow model: frames that arrive while one is in flight are dropped, not queued
            CALLS.delay = 0.5
            page.wait_for_timeout(1000)  # let the frame in flight finish
            posts_start, calls_start = len(posts), CALLS.count
            page.wait_for_timeout(4000)
            sent, answered = len(posts) - posts_start, CALLS.count - calls_start
            # at most one frame per 0.5 s (fewer when the machine is busy), never none
            assert 1 <= answered <= 4.0 / 0.5 + 1, (sent, answered)
            # the browser kept posting a frame every 0.1 s into the one open event; each post
            # replaced the one before, and the handler took the newest when it was free
            assert sent >= 2 * answered, (sent, answered)
            assert not job.done() and job.status().code == Status.IN_QUEUE, job.status()
            page.locator("#webcam-input button[aria-label='capture photo']").click()  # stop
            stopped = CALLS.count
            page.wait_for_timeout(2500)
            # no backlog of old frames is worked off after the stream stops
            assert CALLS.count - stopped <= 1, (sent, answered, CALLS.count - stopped)
            CALLS.delay = 0.0
            # the stream gave the slot back: the waiting video runs
            assert "5 frames" in job.result(timeout=WAIT_MS / 1000)[2]
            print(f"webcam: {sent} frames sent, {answered} answered with a 0.5 s model; {text}")
        finally:
            browser.close()
