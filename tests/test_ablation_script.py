"""``scripts/ablation.py``'s bookkeeping, without training: the command it prints reproduces
the runs, a run folder refuses another schedule, a run is locked while its training lives
(also after the script that started it was killed), repeated epoch records count once, and
``--report-only`` keeps the hand-written reading."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.app_util import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/ablation.py", "ablation_script")


def test_printed_command_reproduces_every_option_that_shapes_the_runs(script, tmp_path):
    argv = [
        "--out", str(tmp_path / "runs"), "--data", str(tmp_path / "d"), "--train-images", "50",
        "--val-images", "10", "--data-seed", "3", "--input-size", "320", "--epochs", "5",
        "--steps-per-epoch", "7", "--batch-size", "2", "--lr-scale", "0.25", "--eval-limit", "9",
        "--variants", "fdr", "none", "--seeds", "4", "5", "--nice", "5",
    ]  # fmt: skip
    args = script.build_parser().parse_args(argv)
    again = script.build_parser().parse_args(script._script_args(args))
    assert vars(again) == vars(args) | {"stop_epoch": 4, "flat_epochs": 2}  # defaults spelt out
    data = tmp_path / "d"
    for v in ("fdr", "none"):
        assert script.train_command(again, v, 4, data) == script.train_command(args, v, 4, data)
    assert script.data_command(again, data) == script.data_command(args, data)


def test_a_run_folder_refuses_another_schedule(script, tmp_path):
    args = script.build_parser().parse_args(["--out", str(tmp_path), "--epochs", "3"])
    command = script.train_command(args, "fdr", 0, tmp_path / "data")
    out = tmp_path / "fdr_seed0"
    out.mkdir()
    script._check_command(out, command)
    assert json.loads((out / "run.json").read_text())["train_command"] == command
    script._check_command(out, command)  # the same command: fine (resume)
    longer = script.build_parser().parse_args(["--out", str(tmp_path), "--epochs", "4"])
    with pytest.raises(RuntimeError, match=r"--epochs 4 \(the run has 3\).*another --out"):
        script._check_command(out, script.train_command(longer, "fdr", 0, tmp_path / "data"))


def test_a_run_stays_locked_while_its_training_lives(script, tmp_path):
    """The script is killed (SIGKILL) during a run; its child keeps the run's lock, so a
    second invocation refuses the folder until the child is gone."""
    out = tmp_path / "fdr_seed0"
    out.mkdir()
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = (
        "import sys, argparse, importlib.util; from pathlib import Path; "
        f"spec = importlib.util.spec_from_file_location('a', {str(SCRIPT)!r}); "
        "s = importlib.util.module_from_spec(spec); spec.loader.exec_module(s); "
        "args = argparse.Namespace(nice=0, threads=1); "
        f"lock = s._locked(Path({str(out)!r})).__enter__(); "
        f"s._call(args, lock, [sys.executable, '-c', {child!r}], 'child')"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ})
    try:
        for _ in range(300):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        grandchild = int(pid_file.read_text())
        with pytest.raises(RuntimeError, match="in use by another process"):
            script._locked(out).__enter__()
        proc.kill()
        proc.wait(timeout=30)
        with pytest.raises(RuntimeError, match="in use by another process"):
            script._locked(out).__enter__()  # the orphaned training still holds it
        os.kill(grandchild, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(grandchild, 0)
                time.sleep(0.1)
            except ProcessLookupError:
                break
        with script._locked(out):  # free again
            pass
    finally:
        proc.kill()
        if pid_file.exists() and pid_file.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_epoch_written_twice_counts_once(script, tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "train_seconds": 10.0}, {"epoch": 2, "train_seconds": 99.0},
            {"epoch": 2, "train_seconds": 12.0}, {"epoch": 3, "train_seconds": 11.0}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    records = script.epoch_records(path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert sum(r["train_seconds"] for r in records) == 33.0


def test_report_only_keeps_the_hand_written_reading(script, tmp_path):
    record = {
        "metrics": {"AP": 0.1, "AP50": 0.2, "AP75": 0.05, "APs": 0.01},
        "layers": {"stages": ["layer 1"], "mean_iou_to_gt": [0.5]},
        "train_seconds": 60.0, "steps": 10, "seconds_per_step": 6.0,
        "stage_ap": [{"stage": "encoder", "AP": 0.05, "AP50": 0.1}],
    }  # fmt: skip
    for v in ("fdr", "golsd", "none"):
        (tmp_path / f"{v}_seed0").mkdir()
        (tmp_path / f"{v}_seed0" / "eval.json").write_text(json.dumps(record))
    results = tmp_path / "ablation.md"
    results.write_text("# old table\n\n## Reading (by hand)\n\n- what the runs show\n")
    argv = ["--out", str(tmp_path), "--seeds", "0", "--results", str(results), "--report-only"]
    assert script.main(argv) == 0
    text = results.read_text()
    assert "# old table" not in text and "| 0.1000 | 0.2000 | 0.0500 | 0.0100 | 1 |" in text
    assert text.rstrip().endswith("## Reading (by hand)\n\n- what the runs show")
    assert script.main(["--out", str(tmp_path / "none"), "--report-only"]) == 2  # no runs
