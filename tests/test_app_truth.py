"""The Detect tab's "Draw the ground truth" box: an annotated image (a synthetic example, or
one opened from an evaluation) gets its true boxes dashed over the detections, labelled in
the image and the summary; an image without annotations is left as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs gradio")

from app.ground_truth import GroundTruth
from app.results import file_digest
from app.state import AppState
from app.tabs import detect
from tests.app_util import SYNTH_EXAMPLE, app_state

ROOT = Path(__file__).resolve().parents[1]
SYNTH = SYNTH_EXAMPLE  # 6 annotated shapes


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> AppState:
    tmp = tmp_path_factory.mktemp("app")
    return app_state(tmp)


def _shared(image) -> tuple:
    return str(image), 0.5, 320, "default", 300, False


def test_ground_truth_is_drawn_dashed_and_labelled(state):
    _, _, _, summary = detect.detect(state, *_shared(SYNTH))
    _, _table, _, with_truth = detect.detect(state, *_shared(SYNTH), True)
    assert "ground truth" not in summary
    assert "Dashed white boxes: this image's ground truth (6 objects" in with_truth
    # no detection above 1.0: the dashes alone (with detections they lie under the boxes)
    bare = detect.detect(state, str(SYNTH), 1.0, 320, "default", 300, False)[0]
    dashed = detect.detect(state, str(SYNTH), 1.0, 320, "default", 300, False, True)[0]
    a, b = np.asarray(bare).astype(int), np.asarray(dashed).astype(int)
    truth = state.examples.find(file_digest(SYNTH))
    x1, y1, x2, _y2 = truth.boxes_xyxy[0].round().astype(int)
    top_edge = np.abs(a[y1, x1:x2] - b[y1, x1:x2]).sum(-1) > 0
    assert 0.2 < top_edge.mean() < 0.9  # dashed: some of the edge changed, not all of it
    assert (b[y1, x1:x2][top_edge] >= 250).all(-1).any()  # white dashes
    # the threshold's re-filter keeps the choice
    refiltered = detect.refilter(state, str(SYNTH), 0.9, 320, "default", 300, False, True)
    assert "ground truth" in refiltered[3]


def test_an_evaluated_image_gets_its_truth_and_others_none(state, tmp_path):
    copy = tmp_path / "opened_from_evaluate.png"  # other bytes than the bundled example
    Image.open(ROOT / "assets" / "examples" / "synth" / "000002.jpg").save(copy)
    before = detect.detect(state, *_shared(copy), True)
    assert "ground truth" not in before[3]  # no annotations known: nothing drawn
    state.examples.add(  # what the Evaluate tab's gallery click does
        file_digest(copy),
        GroundTruth(
            "opened_from_evaluate.png",
            (320, 320),
            np.array([[10.0, 10.0, 100.0, 80.0]]),
            np.array([0]),
            ("circle",),
        ),
    )
    after = detect.detect(state, *_shared(copy), True)
    assert "ground truth (1 object, from opened_from_evaluate.png" in after[3]
    assert np.abs(np.asarray(after[0]).astype(int) - np.asarray(before[0])).sum() > 0
