"""The traced attention equals the reference decoder's (recorded by
scripts/record_attention_fixture.py at D-FINE commit 4a1f73a): the deformable sampling
locations and weights of every layer, and the head-averaged self-attention among queries, for
N and S, at 640x640 and 480x640, within 1e-5 after pairing queries by encoder position."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import dfine
from tests.app_util import load_script
from tests.conftest import FIXTURES, load_tensors, reference_file, reference_model

TOL = 1e-5
RECORDED = FIXTURES / "dfine_attention.safetensors"
SCRIPT = load_script("scripts/record_attention_fixture.py", "record_attention_fixture")


@pytest.fixture(scope="module")
def recorded():
    return load_file(str(RECORDED))


def _model(case: str) -> torch.nn.Module:
    if case == "n_perturbed":
        return reference_model("n_perturbed")
    official = SCRIPT.checkpoint_state(reference_file("dfine_s_random_official.pth"))
    model = dfine.build_model("s").eval()
    model.load_state_dict(SCRIPT.perturb_attention(official))
    return model


_TRACES: dict = {}


def _trace(case: str, size: str, images: torch.Tensor):
    if (case, size) not in _TRACES:
        _TRACES[(case, size)] = _model(case).trace(SCRIPT.input_images(images, size))
    return _TRACES[(case, size)]


def _our_queries(trace, ref_index: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` our query slot of each recorded query (same encoder position)."""
    slots = []
    for img in range(ref_index.shape[0]):
        where = {int(p): j for j, p in enumerate(trace.enc_topk_indices[img])}
        missing = [int(p) for p in ref_index[img] if int(p) not in where]
        assert not missing, f"image {img}: reference positions {missing} not selected by us"
        slots.append(torch.tensor([where[int(p)] for p in ref_index[img]]))
    return torch.stack(slots)


@pytest.mark.parametrize("size", ["640x640", "480x640"])
@pytest.mark.parametrize("case", ["n_perturbed", "s_attention"])
def test_attention_matches_reference(recorded, inputs, case, size):
    key = f"{case}.{size}."
    trace = _trace(case, size, inputs["images"])
    slots = _our_queries(trace, recorded[key + "enc_topk_indices"])
    for img in range(slots.shape[0]):
        q = slots[img]
        for name in ("sampling_locations", "attention_weights"):
            ours = getattr(trace, name)[:, img, q]
            torch.testing.assert_close(ours, recorded[key + name][:, img], rtol=0, atol=TOL)
        ours = trace.self_attention[:, img][:, q][:, :, q]
        torch.testing.assert_close(ours, recorded[key + "self_attention"][:, img], rtol=0, atol=TOL)


def test_the_recorded_attention_is_informative(recorded):
    """Guards the fixture itself: the weights are far from uniform and the points spread,
    so agreeing with it is not automatic."""
    for case in ("n_perturbed", "s_attention"):
        w = recorded[f"{case}.640x640.attention_weights"]
        assert (w.amax(-1) > 2 / w.shape[-1]).float().mean() > 0.5
        loc = recorded[f"{case}.640x640.sampling_locations"]
        assert loc.std(dim=2).mean() > 0.05  # queries sample in different places


def test_recorded_points_per_level_match_the_models():
    info = json.loads(RECORDED.with_suffix(".json").read_text())
    assert info["reference_commit"].startswith("4a1f73a")
    assert dfine.build_model("n").config.decoder.num_points == (6, 6)
    assert dfine.build_model("s").config.decoder.num_points == (3, 6, 3)
    shapes = info["shapes"]
    assert shapes["n_perturbed.640x640"]["attention_weights"][-1] == 12
    assert shapes["s_attention.480x640"]["sampling_locations"][-2] == 12
    assert load_tensors("inputs.pt")["images"].shape[-2:] == (640, 640)
