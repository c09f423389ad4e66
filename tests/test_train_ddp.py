"""Two-process DDP training on CPU (gloo), through the same entry point as ``dfine train``."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, data: str, out: str, results: str) -> None:
    """What ``torchrun`` would set up, then ``dfine.train.run.train``."""
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from dfine.train.run import TrainRun, train

    run = TrainRun(
        recipe="synth",
        data=data,
        out=out,
        epochs=1,
        batch_size=2 * WORLD,
        input_size=256,
        workers=0,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    summary = train(run)
    Path(results, f"rank{rank}.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from dfine.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_ddp")
    make_synthetic_dataset(root, num_train=8, num_val=4, image_size=(256, 256), seed=0,
                           photo_fraction=0.0)  # fmt: skip
    return root


@pytest.mark.slow
def test_two_gloo_processes_end_identical(synth, tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(_free_port(), str(synth), str(out), str(results)), nprocs=WORLD)
    summaries = [json.loads((results / f"rank{r}.json").read_text()) for r in range(WORLD)]
    digests = summaries[0]["weights_digests"]
    assert len(digests) == WORLD and len(set(digests)) == 1  # model and EMA identical
    assert summaries[0]["weights_digests"] == summaries[1]["weights_digests"]
    assert summaries[0]["global_step"] == 2  # 8 images / (2 per rank x 2 ranks)
    # evaluation gathered on rank 0 and broadcast: the same metrics on both ranks
    assert summaries[0]["last_metrics"] == summaries[1]["last_metrics"]
    assert set(summaries[0]["last_metrics"]) >= {"AP", "AP50", "AP75"}
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1  # only rank 0 writes
    assert math.isfinite(records[0]["train_loss"])
    assert (out / "train.log").read_text().count("epoch 1/") == 1
    state = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert state["world_size"] == WORLD and len(state["rng"]) == WORLD
    assert not any(k.startswith("module.") for k in state["model"])
