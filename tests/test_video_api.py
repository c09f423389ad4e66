"""The Video tab's named endpoints over HTTP (gradio_client): ``/video`` then ``/track`` and
``/video_frame`` with the run id it returned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("gradio")
client_lib = pytest.importorskip("gradio_client")

from dfine.data.synth_video import write_synth_video  # noqa: E402
from dfine.video import count_frames  # noqa: E402
from tests.app_util import DEMO, call, serve  # noqa: E402

TIMEOUT = 300


@pytest.fixture(scope="module")
def client(module_monkeypatch):
    if not DEMO.exists():
        pytest.skip("demo model not bundled")
    from app import build_demo

    module_monkeypatch.setenv("DFINE_VIDEO_MAX_FRAMES", "4")  # the tab reads it when built
    demo = build_demo(str(DEMO))
    with serve(demo) as url:
        yield client_lib.Client(url, verbose=False, httpx_kwargs={"timeout": TIMEOUT})


def test_video_then_track_and_frame(client, tmp_path):
    clip, _ = write_synth_video(tmp_path / "api.webm", 6)
    video = client_lib.handle_file(str(clip))
    out = call(client, video, 0.5, 320, "default", 25, 1, True, api_name="/video",
               timeout=TIMEOUT)  # fmt: skip
    annotated, json_file, summary, _slider, tracks, run_id = out
    path = annotated["video"] if isinstance(annotated, dict) else annotated
    assert count_frames(path) == 4
    record = json.loads(Path(json_file).read_text())
    assert record["video"]["frame_count"] == 4 and record["video"]["capped"]
    assert "4 frames" in summary and run_id
    track_id = tracks["value"] if isinstance(tracks, dict) else tracks
    _fig, table, text = call(client, run_id, track_id, api_name="/track", timeout=TIMEOUT)
    assert text.startswith(f"**Track #{track_id}**")
    assert len(table["data"]) >= 3
    image, frame_table, caption = call(client, run_id, 2, api_name="/video_frame",
                                       timeout=TIMEOUT)  # fmt: skip
    assert caption.startswith("Frame 2 ") and len(frame_table["data"]) >= 3
    assert Path(image).is_file()
