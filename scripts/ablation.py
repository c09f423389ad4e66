"""The paper's ablation at small scale: full D-FINE, ``--ablate golsd`` and ``--ablate fdr``.

Trains every variant with every seed on the same seeded synthetic dataset with the same recipe,
schedule and step count (``dfine train``; one process per run, ``--parallel`` at a time,
``--threads`` each, under ``nice``), evaluates each final model (COCO AP on the val split and
the per-layer mean IoU of matched queries to ground truth, ``analysis.layer_stats``) and writes
a Markdown report. Resumable: finished runs are kept, interrupted ones continue from their
``last.pth`` (``dfine train --resume``); run the same command again.

    python scripts/ablation.py --out runs/ablation --results benchmarks/results/ablation_cpu.md
    python scripts/ablation.py --out runs/ablation --report-only   # table from finished runs
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    p.add_argument("--train-images", type=int, default=1000, help="synthetic train images")
    p.add_argument("--val-images", type=int, default=200, help="synthetic val images")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds")
    p.add_argument("--input-size", type=int, default=256, help="train/eval size (N needs 256+)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps-per-epoch", type=int, default=70)
    p.add_argument(
        "--stop-epoch",
        type=int,
        help="epoch where augmentation stops and the EMA restarts (default: the last; "
        "= --epochs: never)",
    )
    p.add_argument(
        "--flat-epochs", type=int, help="epochs at the base lr before the cosine (default half)"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr-scale", type=float, default=0.5)
    p.add_argument("--parallel", type=int, default=2, help="runs at the same time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--nice", type=int, default=10, help="niceness of the training processes")
    p.add_argument("--eval-limit", type=int, default=None, help="val images for layer IoU")
    p.add_argument(
        "--results", type=Path, default=Path("benchmarks/results/ablation_cpu.md"), help="report"
    )
    p.add_argument("--report-only", action="store_true", help="only write the report")
    p.add_argument(
        "--stage-ap",
        action="store_true",
        help="add per-stage AP (analysis.evaluation) to finished runs that lack it, then report",
    )
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
    """Train (or resume) one run, then evaluate it; the result is cached in ``eval.json``."""
    out = run_dir(args, variant, seed)
    result = out / "eval.json"
    if result.exists():
        return json.loads(result.read_text())
    out.mkdir(parents=True, exist_ok=True)
    command = train_command(args, variant, seed, data)
    if not (out / "final.safetensors").exists():
        resume = ["--resume"] if (out / "last.pth").exists() else []
        with open(out / "stdout.log", "a") as log:
            log.write(f"$ {shlex.join(command + resume)}\n")
            log.flush()
            code = subprocess.call(
                ["nice", "-n", str(args.nice), *_cli(command + resume)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(args),
                cwd=ROOT,
            )
        if code != 0:
            raise RuntimeError(f"{variant} seed {seed} failed (exit {code}); see {out}/stdout.log")
    evaluate = [
        sys.executable, str(Path(__file__).resolve()), "--evaluate-run", str(out),
        "--data", str(data), *(["--eval-limit", str(args.eval_limit)] if args.eval_limit else []),
    ]  # fmt: skip
    with open(out / "stdout.log", "a") as log:
        code = subprocess.call(
            ["nice", "-n", str(args.nice), *evaluate],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(args),
            cwd=ROOT,
        )
    if code != 0:
        raise RuntimeError(f"evaluating {out} failed (exit {code}); see {out}/stdout.log")
    record = json.loads(result.read_text())
    print(f"done: {variant} seed {seed}: AP {record['metrics']['AP']:.4f}", flush=True)
    return record


def evaluate_run(out: Path, data: Path, limit: int | None) -> None:
    """COCO metrics and per-layer IoU of ``out/final.safetensors`` → ``out/eval.json``."""
    import torch

    from analysis.layer_stats import layer_stats
    from dfine.checkpoint import load_model
    from dfine.data import CocoDetection, build_val_transforms
    from dfine.files import atomic_write
    from dfine.train.run import validate

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
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r["train_seconds"] for r in records)
    record = {
        "ablation": model.ablation,
        "metrics": metrics,
        "layers": layers,
        "train_seconds": seconds,
        "steps": records[-1]["global_step"],
        "seconds_per_step": seconds / max(records[-1]["global_step"], 1),
        "final_train_loss": records[-1].get("train_loss"),
    }
    atomic_write(out / "eval.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))


def stage_ap_run(out: Path, data: Path) -> None:
    """Per-stage COCO AP (encoder, pre-head, every layer; own scores) of ``out``'s final model
    with :func:`analysis.evaluation.evaluate_dataset`, added to ``out/eval.json``."""
    import torch

    from analysis.evaluation import EvalSettings, evaluate_dataset
    from dfine.files import atomic_write

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
        with open(out / "stdout.log", "a") as log:
            code = subprocess.call(
                ["nice", "-n", str(args.nice), *command, "--data", str(data)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(args),
                cwd=ROOT,
            )
        if code != 0:
            raise RuntimeError(f"per-stage AP of {out} failed (exit {code}); see its stdout.log")
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
        "D-FINE-N trained from scratch on the seeded synthetic shapes, three variants with the",
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
            [f"python scripts/ablation.py {shlex.join(_script_args(args))} --stage-ap"]
            if _stage_ap_lines(args, variants, records)
            else []
        ),
        "```",
        "",
        f"Each run: {args.epochs} epochs × {args.steps_per_epoch} steps of batch "
        f"{args.batch_size} at {args.input_size}² ({args.epochs * args.steps_per_epoch} steps), "
        f"{args.parallel} runs in parallel with {args.threads} thread(s) each under "
        f"`nice -n {args.nice}`, on a 2-core CPU shared with other work (so the times are "
        "wall-clock under load, not clean).",
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


def _script_args(args: argparse.Namespace) -> list[str]:
    out = ["--out", str(args.out)]
    for name in ("train_images", "val_images", "epochs", "steps_per_epoch", "batch_size"):
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out += ["--stop-epoch", str(stop_epoch(args)), "--flat-epochs", str(flat_epochs(args))]
    if args.eval_limit:
        out += ["--eval-limit", str(args.eval_limit)]
    out += ["--seeds", *map(str, args.seeds), "--parallel", str(args.parallel)]
    return [*out, "--threads", str(args.threads), "--results", str(args.results)]


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
            for job, future in futures.items():
                records[job] = future.result()
        print(f"all runs done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(report(args, data, records))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
