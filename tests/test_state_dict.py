"""The state dict of every size has exactly the reference keys, shapes and dtypes."""

from __future__ import annotations

import json

import pytest
import torch

import dfine
from tests.conftest import reference_file


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_state_dict_matches_reference_layout(size):
    ref = json.loads(reference_file(f"official_keys_{size}.json").read_text())
    model = dfine.build_model(size)
    sd = model.state_dict()
    expected = [(k, tuple(s), d) for k, s, d in ref["keys"]]
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]
    assert got == expected  # same keys, same order, same shapes and dtypes
    assert len(sd) == ref["num_state_dict_keys"]
    params = list(model.parameters())  # shared parameters counted once, as the reference
    assert sum(p.numel() for p in params) == ref["param_count"]
    assert sum(p.numel() for p in params if p.requires_grad) == ref["param_count_requires_grad"]
    buffers = sum(b.numel() for b in model.buffers())
    assert buffers == ref["buffer_count"]


def test_aliased_up_and_reg_scale_are_shared():
    model = dfine.build_model("n")
    assert model.decoder.decoder.up is model.decoder.up
    assert model.decoder.decoder.reg_scale is model.decoder.reg_scale
    assert model.decoder.reg_scale.dtype == torch.int64
    assert not model.decoder.up.requires_grad


def test_frozen_norm_and_stem_for_large_sizes():
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = dfine.build_model("l")
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert not norms and frozen
    assert not any(p.requires_grad for p in model.backbone.stem.parameters())
    assert all(p.requires_grad for p in model.backbone.stages.parameters())


def test_decoder_layers_start_identical_like_reference():
    # the reference deep-copies one decoder layer (and one LQE); heads are initialised per layer
    model = dfine.build_model("n")
    layers = model.decoder.decoder.layers
    for other in layers[1:]:
        for (name, p0), p1 in zip(layers[0].named_parameters(), other.parameters()):
            assert torch.equal(p0, p1), name
    heads = model.decoder.dec_score_head
    assert not torch.equal(heads[0].weight, heads[1].weight)


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model size 'q'"):
        dfine.build_model("q")
    with pytest.raises(ValueError, match="num_classes"):
        dfine.build_model("n", num_classes=0)
