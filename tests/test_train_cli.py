"""``dfine train`` / ``dfine val`` end to end: SIGKILL mid-run, ``--resume``, identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dfine.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from dfine.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_cli")
    make_synthetic_dataset(root, num_train=4, num_val=2, image_size=(256, 256), seed=0,
                           photo_fraction=0.0)  # fmt: skip
    return root


def _train_args(data: Path, out: Path) -> list[str]:
    # 3 epochs of 2 steps, evaluated every epoch; epoch 2 is the stop epoch (best stage-1
    # state reloaded, EMA restarted), so the resumed run goes through that too
    return [
        "train", "--recipe", "synth", "--data", str(data), "--out", str(out),
        "--epochs", "3", "--stop-epoch", "2", "--batch-size", "2", "--input-size", "256",
        "--workers", "0", "--seed", "7", "--deterministic", "--quiet", "--no-tensorboard",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "dfine.train", *args]


class CheckpointWatcher(threading.Thread):
    """Loads every ``*.pth`` as soon as it appears or changes: each must be complete."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.stop, self.seen, self.errors = folder, False, {}, []

    def run(self) -> None:
        while not self.stop:
            for path in self.folder.glob("*.pth") if self.folder.exists() else []:
                try:
                    key = path.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                if self.seen.get(path.name) == key:
                    continue
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    assert "model" in state and "last_epoch" in state
                    self.seen[path.name] = key
                except FileNotFoundError:
                    continue
                except Exception as e:  # a partial file would land here
                    self.errors.append(f"{path.name}: {e}")
            time.sleep(0.02)


def _last_epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["last_epoch"]


@pytest.mark.slow
def test_kill_and_resume_ends_with_identical_weights(synth, tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    done = subprocess.run(_command(_train_args(synth, full)), env=_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    watcher = CheckpointWatcher(broken)
    watcher.start()
    proc = subprocess.Popen(_command(_train_args(synth, broken)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.time() + 600
        while not (broken / "last.pth").exists() and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        time.sleep(0.3)  # into epoch 1
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _last_epoch(broken / "last.pth")
    assert killed_at < 2  # interrupted before the end
    assert not (broken / "final.safetensors").exists()

    resumed = subprocess.run(_command([*_train_args(synth, broken), "--resume"]), env=_env(),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    watcher.stop = True
    watcher.join()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not watcher.errors, watcher.errors
    assert "last.pth" in watcher.seen

    a = torch.load(full / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(broken / "last.pth", map_location="cpu", weights_only=True)
    assert a["last_epoch"] == b["last_epoch"] == 2 and a["global_step"] == b["global_step"]
    for part in ("model",):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), k
    for k, v in a["ema"]["module"].items():
        assert torch.equal(v, b["ema"]["module"][k]), k
    assert a["best"] == b["best"]
    assert not [p for p in broken.iterdir() if ".tmp" in p.name]  # no leftovers
    records = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]  # 1-based, as people count
    log = (broken / "train.log").read_text()
    assert "stop epoch" in log and "resumed from" in log


@pytest.mark.slow
def test_val_command(synth, tmp_path, capsys):
    import dfine
    from dfine.train.recipes import get_recipe
    from dfine.train.run import build_model_for

    torch.manual_seed(0)
    model = build_model_for(get_recipe("synth").replace(input_size=256), num_classes=8)
    dfine.save_model(
        model, tmp_path / "w.safetensors", metadata={"recipe": get_recipe("synth").to_dict()}
    )
    rc = main(["val", "--weights", str(tmp_path / "w.safetensors"), "--data", str(synth),
               "--json", "--quiet", "--workers", "0", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())


def test_help_lists_recipes_and_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for word in ("--recipe", "--resume", "--tune-from", "--batch-size", "coco_x", "obj2custom"):
        assert word in text
    assert main(["train", "--data", "/nonexistent", "--out", "/tmp/x", "--quiet"]) == 2
