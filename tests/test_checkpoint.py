"""Loading and saving checkpoints; clear errors for files that do not fit."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import dfine
from dfine.checkpoint import CheckpointError, infer_config, read_checkpoint
from tests.conftest import FIXTURES, reference_file


def test_load_reference_checkpoint_infers_size_and_prefers_ema(tmp_path):
    path = reference_file("dfine_n_random_official.pth")
    model = dfine.load_model(path)
    assert model.config.size == "n" and model.num_classes == 80 and not model.training
    assert model.class_names[0] == "person"
    # a file whose 'model' and 'ema.module' differ: ema wins, as in the reference loader
    sd = torch.load(path, weights_only=True)["model"]
    other = {k: v.clone() for k, v in sd.items()}
    other["decoder.enc_score_head.bias"] += 1.0
    torch.save({"model": sd, "ema": {"module": other, "updates": 1}}, tmp_path / "both.pth")
    loaded = dfine.load_model(tmp_path / "both.pth")
    assert torch.equal(loaded.decoder.enc_score_head.bias, other["decoder.enc_score_head.bias"])
    torch.save({"model": sd}, tmp_path / "model_only.pth")
    assert torch.equal(
        dfine.load_model(tmp_path / "model_only.pth").decoder.enc_score_head.bias,
        sd["decoder.enc_score_head.bias"],
    )


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_infer_config_for_every_size(size):
    sd = dfine.build_model(size, num_classes=7).state_dict()
    cfg = infer_config(sd)
    assert cfg.size == size and cfg.num_classes == 7


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_round_trip(tmp_path, suffix, model_n_perturbed, inputs):
    path = dfine.save_model(model_n_perturbed, tmp_path / f"m{suffix}", metadata={"recipe": "test"})
    assert not list(tmp_path.glob("*.tmp"))
    loaded = dfine.load_model(path)
    for (k, a), b in zip(model_n_perturbed.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    x = inputs["images"][:1]
    with torch.inference_mode():
        assert torch.equal(loaded(x)["pred_boxes"], model_n_perturbed(x)["pred_boxes"])
    if suffix == ".safetensors":
        _, meta = read_checkpoint(path)
        assert meta["recipe"] == "test" and meta["size"] == "n" and len(meta["class_names"]) == 80
    else:  # the reference layout: {'model': state_dict}, aliases included
        raw = torch.load(path, weights_only=True)
        assert "decoder.decoder.up" in raw["model"] and "decoder.anchors" in raw["model"]


def test_custom_class_names_survive_safetensors(tmp_path):
    model = dfine.build_model("n", num_classes=3, class_names=("cat", "dog", "cow"))
    path = dfine.save_model(model.eval(), tmp_path / "pets.safetensors")
    assert dfine.load_model(path).class_names == ("cat", "dog", "cow")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    torch.save({"model": {"x": Evil()}}, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="raw pickle"):
        dfine.load_model(path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(posix.system\)"):
        dfine.load_model(tmp_path / "evil2.pth")
    assert not (tmp_path / "pwned").exists()


def test_truncated_empty_and_wrong_files(tmp_path):
    data = reference_file("dfine_n_random_official.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        dfine.load_model(tmp_path / "trunc.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        dfine.load_model(tmp_path / "empty.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        dfine.load_model(tmp_path / "text.pth")
    torch.save({"weights": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not look like a D-FINE checkpoint"):
        dfine.load_model(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        dfine.load_model(tmp_path / "missing.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="safetensors"):
        dfine.load_model(tmp_path / "bad.safetensors")


def test_mismatched_weights_are_listed(tmp_path):
    sd = dfine.build_model("n").state_dict()
    del sd["decoder.pre_bbox_head.layers.0.bias"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    sd["decoder.query_pos_head.layers.0.weight"] = torch.zeros(3, 3)
    torch.save({"model": sd}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        dfine.load_model(tmp_path / "broken.pth")
    msg = str(err.value)
    assert "1 missing: decoder.pre_bbox_head.layers.0.bias" in msg
    assert "1 unexpected: decoder.extra.weight" in msg
    assert "mis-shaped: decoder.query_pos_head.layers.0.weight" in msg


def test_wrong_class_count_and_non_finite(tmp_path):
    path = reference_file("dfine_n_random_official.pth")
    with pytest.raises(CheckpointError, match="80 classes, not 20"):
        dfine.load_model(path, num_classes=20)
    sd = torch.load(path, weights_only=True)["model"]
    sd["decoder.enc_score_head.weight"] = sd["decoder.enc_score_head.weight"].clone()
    sd["decoder.enc_score_head.weight"][0, 0] = float("nan")
    torch.save({"model": sd}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="non-finite"):
        dfine.load_model(tmp_path / "nan.pth")


def test_anchors_of_another_eval_size_load(tmp_path):
    model = dfine.build_model("n")
    sd = model.state_dict()
    anchors, valid = model.decoder.generate_anchors([(20, 20), (10, 10)])
    sd["decoder.anchors"], sd["decoder.valid_mask"] = anchors, valid
    torch.save({"model": sd}, tmp_path / "m320.pth")
    loaded = dfine.load_model(tmp_path / "m320.pth")
    assert loaded.decoder.anchors.shape == (1, 500, 4)


def test_fixture_files_present_for_fresh_clones():
    for name in ("inputs.pt", "dfine_n_random_official.pth", "dfine_n_perturbed_eval_outputs.pt"):
        assert (FIXTURES / name).exists(), name
