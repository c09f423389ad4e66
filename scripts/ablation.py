"""The paper's ablation at small scale: full D-FINE, ``--ablate golsd`` and ``--ablate fdr``.

Trains every variant with every seed on the same seeded synthetic dataset with the same recipe,
schedule and step count (``dfine train``; one process per run, ``--parallel`` at a time,
``--threads`` each, under ``nice``), evaluates each final model (COCO AP on the val split and
the per-layer mean IoU of matched queries to ground truth, ``analysis.layer_stats``) and writes
a Markdown report with the per-stage AP of every run (``analysis.evaluation``). Resumable:
finished runs are kept, interrupted ones continue from their ``last.pth`` (``dfine train
--resume``); run the same command again. Each run folder records its training command
(``run.json``) and refuses another one (a changed schedule would mix two experiments), and
is locked while its training runs (a second invocation on the same ``--out`` stops with a
message instead of training into the same folder).

The defaults are the committed experiment (``benchmarks/results/ablation_cpu.md``): D-FINE-N at
256² on 2,000 synthetic images, 3 variants x 3 seeds x 800 steps of batch 8, three runs at a
time with one thread each; about 35 min per run and 2 h in all on an idle 2-core CPU.

    python scripts/ablation.py   # runs/ablation, benchmarks/results/ablation_cpu.md
    python scripts/ablation.py --out runs/ablation --report-only   # table from finished runs
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a checkout's script: dfine and analysis from this checkout

from analysis.evaluation import EvalSettings, evaluate_dataset  # noqa: E402
from analysis.layer_stats import layer_stats  # noqa: E402
from dfine.checkpoint import load_model  # noqa: E402
from dfine.data import CocoDetection, build_val_transforms  # noqa: E402
from dfine.files import atomic_write  # noqa: E402
from dfine.train.run import validate  # noqa: E402

READING = "## Reading"
VARIANTS = ("fdr", "golsd", "none")
LABELS = {
    "fdr": "`--ablate fdr` (RT-DETR-style baseline: box deltas, L1+GIoU)",
    "golsd": "`--ablate golsd` (+FDR: distributions + FGL)",
    "none": "full D-FINE (+FDR +GO-LSD: DDF self-distillation, union matching)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="runs folder")
    p.add_argument("--data", type=Path, help="dataset folder (default OUT/data, made if missing)")
    p.add_argument("--train-images", type=int, default=2000, help="synthetic train images")
    p.add_argument("--val-images", type=int, default=200, help="synthetic val images")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="none: full D-FINE"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--input-size", type=int, default=256, help="train/eval size (N needs 256+)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run")
    p.add_argument("--steps-per-epoch", type=int, default=200, help="optimiser steps per epoch")
    p.add_argument(
        "--stop-epoch",
        type=int,
        help="epochs before augmentation stops and the EMA restarts (default: --epochs - 1, "
        "so the last epoch trains without augmentation; = --epochs: never)",
    )
    p.add_argument(
        "--flat-epochs",
        type=int,
        help="epochs at the base lr before the cosine (default: half of --epochs)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per step")
    p.add_argument("--lr-scale", type=float, default=0.5, help="times the recipe's learning rates")
    p.add_argument("--parallel", type=int, default=3, help="runs at the same time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--nice", type=int, default=10, help="niceness of the training processes")
    p.add_argument(
        "--eval-limit", type=int, default=100, help="val images for the per-layer IoU; 0: all"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=Path("benchmarks/results/ablation_cpu.md"),
        help="the Markdown report",
    )
    p.add_argument("--report-only", action="store_true", help="only write the report")
    p.add_argument(
        "--stage-ap",
        action="store_true",
        help="add per-stage AP (analysis.evaluation) to finished runs that lack it, then report",
    )
    for action in p._actions:  # every option with a value says its default
        quiet = (
            action.default is None or action.default is False or action.default is argparse.SUPPRESS
        )
        if not quiet and "default" not in (action.help or ""):
            action.help = f"{action.help or ''} (default: %(default)s)".strip()
    return p


def train_command(args: argparse.Namespace, variant: str, seed: int, data: Path) -> list[str]:
    """The ``dfine train`` command of one run (identical for every variant but ``--ablate``)."""
    return [
        "dfine", "train", "--recipe", "synth", "--data", str(data),
        "--out", str(run_dir(args, variant, seed)),
        "--epochs", str(args.epochs), "--stop-epoch", str(stop_epoch(args)),
        "--max-steps-per-epoch", str(args.steps_per_epoch),
        "--batch-size", str(args.batch_size), "--lr-scale", str(args.lr_scale),
        "--scheduler", "flatcosine", "--flat-epochs", str(flat_epochs(args)),
        "--input-size", str(args.input_size), "--workers", "0", "--seed", str(seed),
        "--no-val", "--no-tensorboard", "--quiet", "--ablate", variant,
    ]  # fmt: skip


def stop_epoch(args: argparse.Namespace) -> int:
    return args.epochs - 1 if args.stop_epoch is None else args.stop_epoch


def flat_epochs(args: argparse.Namespace) -> int:
    return max(args.epochs // 2, 1) if args.flat_epochs is None else args.flat_epochs


def data_command(args: argparse.Namespace, data: Path) -> list[str]:
    size = str(args.input_size)
    return [
        "dfine", "data", "synth", "--out", str(data), "--train", str(args.train_images),
        "--val", str(args.val_images), "--size", size, size, "--seed", str(args.data_seed),
        "--workers", "1", "--quiet",
    ]  # fmt: skip


def run_dir(args: argparse.Namespace, variant: str, seed: int) -> Path:
    return args.out / f"{variant}_seed{seed}"


def _env(args: argparse.Namespace) -> dict[str, str]:
    threads = str(args.threads)
    return {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def _cli(command: list[str]) -> list[str]:
    """``dfine ...`` through this interpreter (the checkout's code, not an installed copy)."""
    if command[:2] == ["dfine", "train"]:
        return [sys.executable, "-m", "dfine.train", *command[1:]]
    run_cli = "import sys; from dfine.cli import main; sys.exit(main())"
    return [sys.executable, "-c", run_cli, *command[1:]]


def one_run(args: argparse.Namespace, variant: str, seed: int, data: Path) -> dict:
    """Train (or resume) one run, then evaluate it (COCO AP, per-layer IoU, per-stage AP);
    the result is cached in ``eval.json``."""
    out = run_dir(args, variant, seed)
    out.mkdir(parents=True, exist_ok=True)
    command = train_command(args, variant, seed, data)
    with _locked(out) as lock:
        _check_command(out, command)
        result = out / "eval.json"
        record = json.loads(result.read_text()) if result.exists() else None
        if record is not None and record.get("eval_limit", args.eval_limit) != args.eval_limit:
            record = None  # evaluated on another number of images: evaluate again
        if record is None:
            if not (out / "final.safetensors").exists():
                resume = ["--resume"] if (out / "last.pth").exists() else []
                _call(args, lock, _cli(command + resume), f"{variant} seed {seed}")
            evaluate = [
                sys.executable, str(Path(__file__).resolve()), "--evaluate-run", str(out),
                "--data", str(data),
                *(["--eval-limit", str(args.eval_limit)] if args.eval_limit else []),
            ]  # fmt: skip
            _call(args, lock, evaluate, f"evaluating {out}")
            record = json.loads(result.read_text())
        if "stage_ap" not in record:
            stage_ap = [sys.executable, str(Path(__file__).resolve()), "--stage-ap-run", str(out)]
            _call(args, lock, [*stage_ap, "--data", str(data)], f"per-stage AP of {out}")
            record = json.loads(result.read_text())
    print(f"done: {variant} seed {seed}: AP {record['metrics']['AP']:.4f}", flush=True)
    return record


def _call(args: argparse.Namespace, lock: _locked, command: list[str], what: str) -> None:
    """Run ``command`` under ``nice`` with its output appended to the run's ``stdout.log``;
    the child inherits the run's lock, so it stays held while the child lives (also when
    this script is killed)."""
    out = lock.path.parent
    with open(out / "stdout.log", "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        code = subprocess.call(
            ["nice", "-n", str(args.nice), *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(args),
            cwd=ROOT,
            pass_fds=(lock.fd,),
        )
    if code != 0:
        raise RuntimeError(f"{what} failed (exit {code}); see {out}/stdout.log")


class _locked:
    """An exclusive ``flock`` on ``out/run.lock`` for the duration of a run; another holder
    (this script run twice, or a training left running by a killed one) is an error."""

    def __init__(self, out: Path) -> None:
        self.path = out / "run.lock"
        self.fd = -1

    def __enter__(self) -> _locked:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(
                f"{self.path.parent} is in use by another process (a second ablation.py on the "
                "same --out, or a training a killed one left running); wait for it or stop it"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _difference(recorded: list[str], command: list[str]) -> str:
    """What changed between two training commands, e.g. ``--epochs 4 (the run has 3)``."""
    if len(recorded) == len(command):
        changed = [
            f"{command[i - 1]} {command[i]} (the run has {recorded[i]})"
            for i in range(1, len(command))
            if recorded[i] != command[i] and command[i - 1].startswith("--")
        ]
        if changed:
            return ", ".join(changed)
    return f"the run has: {shlex.join(recorded)}"


def _check_command(out: Path, command: list[str]) -> None:
    """Record ``command`` in ``out/run.json`` the first time; refuse a different one later
    (the folder holds a run of another schedule or dataset)."""
    path = out / "run.json"
    if path.exists():
        recorded = json.loads(path.read_text())["train_command"]
        if recorded != command:
            raise RuntimeError(
                f"{out} holds a run of another command ({_difference(recorded, command)}); "
                "use another --out or remove that folder"
            )
        return

    text = json.dumps({"train_command": command}, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def epoch_records(path: Path) -> list[dict]:
    """The run's ``metrics.jsonl`` records, one per epoch in order: the last of an epoch
    written twice (by a run killed between its record and its checkpoint, then restarted)."""
    lines = path.read_text().splitlines()
    by_epoch = {r["epoch"]: r for r in map(json.loads, filter(str.strip, lines))}
    return [by_epoch[e] for e in sorted(by_epoch)]


def evaluate_run(out: Path, data: Path, limit: int | None) -> None:
    """COCO metrics and per-layer IoU of ``out/final.safetensors`` → ``out/eval.json``."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    metrics = validate(out / "final.safetensors", data, workers=0, progress=False)
    model = load_model(out / "final.safetensors")
    size = model.config.eval_size[0]
    dataset = CocoDetection(
        data / "val",
        data / "annotations" / "instances_val.json",
        transforms=build_val_transforms(size),
    )
    layers = layer_stats(model, dataset, limit)
    records = epoch_records(out / "metrics.jsonl")
    seconds = sum(r["train_seconds"] for r in records)
    record = {
        "ablation": model.ablation,
        "metrics": metrics,
        "layers": layers,
        "train_seconds": seconds,
        "steps": records[-1]["global_step"],
        "seconds_per_step": seconds / max(records[-1]["global_step"], 1),
        "final_train_loss": records[-1].get("train_loss"),
        "eval_limit": limit,
    }
    atomic_write(out / "eval.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))


def stage_ap_run(out: Path, data: Path) -> None:
    """Per-stage COCO AP (encoder, pre-head, every layer; own scores) of ``out``'s final model
    with :func:`analysis.evaluation.evaluate_dataset`, added to ``out/eval.json``."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    settings = EvalSettings(calibration=False)
    report = evaluate_dataset(out / "final.safetensors", data, settings=settings, cache=False)
    record = json.loads((out / "eval.json").read_text())
    record["stage_ap"] = [{"stage": s.name, "AP": s.AP, "AP50": s.AP50} for s in report.stages]
    atomic_write(out / "eval.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))


def _add_stage_ap(args: argparse.Namespace, data: Path, jobs: list[tuple[str, int]]) -> None:
    def one(job: tuple[str, int]) -> None:
        out = run_dir(args, *job)
        path = out / "eval.json"
        if not path.exists() or "stage_ap" in json.loads(path.read_text()):
            return
        command = [sys.executable, str(Path(__file__).resolve()), "--stage-ap-run", str(out)]
        with _locked(out) as lock:
            _call(args, lock, [*command, "--data", str(data)], f"per-stage AP of {out}")
        print(f"per-stage AP: {job[0]} seed {job[1]} done", flush=True)

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(one, jobs))


def _mean_spread(values: list[float]) -> str:
    """``mean ± half-range`` (with two seeds the half-range is the distance to either run)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f}"


def report(args: argparse.Namespace, data: Path, records: dict[tuple[str, int], dict]) -> str:
    variants = [v for v in args.variants if any((v, s) in records for s in args.seeds)]
    keys = ("AP", "AP50", "AP75", "APs")
    lines = [
        "# The paper's ablation at small scale (CPU)",
        "",
        "D-FINE-N trained from scratch on the seeded synthetic shapes, "
        f"{_count(len(variants), 'variant')} with the",
        "same data, recipe, schedule, step count and seeds (`scripts/ablation.py`). AP on the",
        f"{args.val_images} val images (COCO AP .50:.95); mean ± half the range over seeds "
        f"{', '.join(map(str, args.seeds))}.",
        "",
        "| variant | AP | AP50 | AP75 | APs | runs |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        runs = [records[(v, s)] for s in args.seeds if (v, s) in records]
        cells = [_mean_spread([r["metrics"][k] for r in runs]) for k in keys]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + f" | {len(runs)} |")
    lines += ["", "Per run:", "", "| variant | seed | AP | AP50 | AP75 | APs | training time |"]
    lines.append("|---|---|---|---|---|---|---|")
    for v in variants:
        for s in args.seeds:
            if (v, s) not in records:
                continue
            r = records[(v, s)]
            cells = " | ".join(f"{r['metrics'][k]:.4f}" for k in keys)
            minutes = r["train_seconds"] / 60
            lines.append(
                f"| {v} | {s} | {cells} | {minutes:.1f} min ({r['steps']} steps, "
                f"{r['seconds_per_step']:.2f} s/step) |"
            )
    lines += [
        "",
        "Per-layer mean IoU of the final layer's matched query to each ground-truth box",
        f"(`analysis.layer_stats` on the first {args.eval_limit or args.val_images} val images; "
        "the fdr variant has no pre-head), mean ± half the range over seeds:",
        "",
    ]
    names = {n for r in records.values() for n in r["layers"]["stages"]}
    layers = sorted((n for n in names if n != "pre-head"), key=lambda n: int(n.split()[-1]))
    stage_names = (["pre-head"] if "pre-head" in names else []) + layers
    lines.append("| variant | " + " | ".join(stage_names) + " |")
    lines.append("|---|" + "---|" * len(stage_names))
    for v in variants:
        runs = [records[(v, s)]["layers"] for s in args.seeds if (v, s) in records]
        cells = []
        for name in stage_names:
            vals = [
                r["mean_iou_to_gt"][r["stages"].index(name)] for r in runs if name in r["stages"]
            ]
            cells.append(_mean_spread(vals) if vals else "—")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += _stage_ap_lines(args, variants, records)
    example = (args.variants[0], args.seeds[0])
    lines += [
        "",
        "## Commands",
        "",
        "```bash",
        shlex.join(data_command(args, data)),
        shlex.join(train_command(args, *example, data)) + "   # per variant and seed",
        f"python scripts/ablation.py {shlex.join(_script_args(args))}   # all runs + this file",
        *(
            ["python scripts/ablation.py   # the same: these are its defaults"]
            if _script_args(args) == _script_args(build_parser().parse_args([]))
            else []
        ),
        "```",
        "",
        f"Each run: {args.epochs} epochs × {args.steps_per_epoch} steps of batch "
        f"{args.batch_size} at {args.input_size}² ({args.epochs * args.steps_per_epoch} steps), "
        f"{args.parallel} runs in parallel with {_count(args.threads, 'thread')} each under "
        f"`nice -n {args.nice}`, on a {os.cpu_count()}-core CPU; the times are wall-clock, "
        "so other work on the machine lengthens them.",
    ]
    return "\n".join(lines) + "\n"


def _stage_ap_lines(args, variants: list[str], records: dict) -> list[str]:
    """The per-stage AP table, when every run has it (``--stage-ap``)."""
    if not records or not all("stage_ap" in r for r in records.values()):
        return []
    names: list[str] = []
    for r in records.values():
        names += [s["stage"] for s in r["stage_ap"] if s["stage"] not in names]
    layers = sorted((n for n in names if n.startswith("layer")), key=lambda n: int(n.split()[-1]))
    order = [n for n in ("encoder", "pre-head") if n in names] + layers
    lines = [
        "",
        "Per-stage AP (`analysis.evaluation`: every stage's boxes scored with its own class",
        "scores, all val images), mean ± half the range over seeds:",
        "",
        "| variant | " + " | ".join(order) + " |",
        "|---|" + "---|" * len(order),
    ]
    for v in variants:
        runs = [records[(v, s)]["stage_ap"] for s in args.seeds if (v, s) in records]
        cells = []
        for name in order:
            vals = [x["AP"] for r in runs for x in r if x["stage"] == name]
            cells.append(_mean_spread(vals) if vals else "—")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _script_args(args: argparse.Namespace) -> list[str]:
    """This script's options that reproduce ``args`` (every one that shapes the runs)."""
    out = ["--out", str(args.out)]
    if args.data is not None:
        out += ["--data", str(args.data)]
    for name in ("train_images", "val_images", "data_seed", "input_size", "epochs",
                 "steps_per_epoch", "batch_size", "lr_scale"):  # fmt: skip
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out += ["--stop-epoch", str(stop_epoch(args)), "--flat-epochs", str(flat_epochs(args))]
    out += ["--eval-limit", str(args.eval_limit or 0)]
    if list(args.variants) != list(VARIANTS):
        out += ["--variants", *args.variants]
    out += ["--seeds", *map(str, args.seeds), "--parallel", str(args.parallel)]
    out += ["--threads", str(args.threads), "--nice", str(args.nice)]
    return [*out, "--results", str(args.results)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--evaluate-run":  # internal: one run's evaluation, in its own process
        sub = argparse.ArgumentParser()
        sub.add_argument("--evaluate-run", type=Path, required=True)
        sub.add_argument("--data", type=Path, required=True)
        sub.add_argument("--eval-limit", type=int, default=None)
        a = sub.parse_args(argv)
        evaluate_run(a.evaluate_run, a.data, a.eval_limit)
        return 0
    if argv and argv[0] == "--stage-ap-run":  # internal: one run's per-stage AP
        sub = argparse.ArgumentParser()
        sub.add_argument("--stage-ap-run", type=Path, required=True)
        sub.add_argument("--data", type=Path, required=True)
        a = sub.parse_args(argv)
        stage_ap_run(a.stage_ap_run, a.data)
        return 0
    args = build_parser().parse_args(argv)
    args.eval_limit = args.eval_limit or None  # 0: every val image
    if args.epochs < 1 or args.input_size % 32:
        print("error: --epochs must be >= 1 and --input-size a multiple of 32", file=sys.stderr)
        return 2
    data = args.data or args.out / "data"
    if not args.report_only and not (data / "annotations" / "instances_val.json").exists():
        print(f"making the dataset: {shlex.join(data_command(args, data))}", flush=True)
        subprocess.check_call(_cli(data_command(args, data)), env=_env(args), cwd=ROOT)
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    records: dict[tuple[str, int], dict] = {}
    if args.stage_ap:
        _add_stage_ap(args, data, jobs)
    if args.report_only or args.stage_ap:
        for v, s in jobs:
            path = run_dir(args, v, s) / "eval.json"
            if path.exists():
                records[(v, s)] = json.loads(path.read_text())
        if not records:
            print(f"error: no finished runs under {args.out}", file=sys.stderr)
            return 2
    else:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            futures = {job: pool.submit(one_run, args, *job, data) for job in jobs}
            failed = []
            for job, future in futures.items():
                try:
                    records[job] = future.result()
                except RuntimeError as e:  # the others go on; rerun the command to resume
                    print(f"error: {e}", file=sys.stderr, flush=True)
                    failed.append(job)
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} runs failed; no report written",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"all runs done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    text = report(args, data, records)
    old = args.results.read_text() if args.results.exists() else ""
    if READING in old and (args.report_only or args.stage_ap):  # the same runs' reading
        text += "\n" + old[old.index(READING) :]
        print(f"kept the {READING.strip()} section of {args.results}: check it against the "
              "new numbers")  # fmt: skip

    atomic_write(args.results, lambda tmp: tmp.write_text(text))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
