"""Where a training run reports: the console (through tqdm), ``train.log``, ``metrics.jsonl``
(one JSON record per epoch), ``metrics.csv`` (the same records as a table) and TensorBoard.

Only process 0 writes. Epochs in records and messages are numbered from 1 (epoch 1 is the
first), as the progress bar counts them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dfine.files import atomic_write
from dfine.train import dist
from dfine.train.names import CSV_NAME, JSONL_NAME, LOG_NAME, TENSORBOARD_DIR


class MetricsSink:
    """Console + ``train.log`` lines, per-epoch records and TensorBoard scalars of one run."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.tensorboard = tensorboard
        self._writer: Any = None
        self._columns: list[str] | None = None

    @property
    def main(self) -> bool:
        return dist.is_main()

    # ------------------------------------------------------------------ text
    def log(self, message: str) -> None:
        """Print (process 0) and append to ``train.log``."""
        if not self.main:
            return
        tqdm.write(message)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG_NAME, "a") as f:
            f.write(message + "\n")

    # ------------------------------------------------------------------ TensorBoard
    def open(self, global_step: int) -> None:
        """Start TensorBoard logging (dropping events after ``global_step`` of a killed run)."""
        if not (self.main and self.tensorboard) or self._writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("TensorBoard logging is off: pip install tensorboard to enable it")
            self.tensorboard = False
            return
        purge = global_step if global_step > 0 else None
        self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=purge)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ epoch records
    def _records(self) -> list[dict[str, Any]]:
        path = self.out_dir / JSONL_NAME
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def record(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl`` and ``metrics.csv`` (the table is
        rewritten only when a record brings a new column, e.g. the first evaluation)."""
        if not self.main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / JSONL_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")
        csv_path = self.out_dir / CSV_NAME
        if self._columns is None and csv_path.exists():
            with open(csv_path, newline="") as f:
                self._columns = next(csv.reader(f), None)
        if self._columns is not None and set(record) <= set(self._columns):
            with open(csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns).writerow(record)
            return
        self._rewrite_csv(self._records())

    def truncate(self, last_epoch: int) -> None:
        """Drop the records of epochs after ``last_epoch`` (1-based; written by a run that was
        killed after its last checkpoint)."""
        path = self.out_dir / JSONL_NAME
        if not self.main or not path.exists():
            return
        kept = [r for r in self._records() if r.get("epoch", 0) <= last_epoch]
        atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
        self._rewrite_csv(kept)

    def _rewrite_csv(self, records: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for r in records:
            columns.extend(k for k in r if k not in columns)

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(records)

        atomic_write(self.out_dir / CSV_NAME, write)
        self._columns = columns
