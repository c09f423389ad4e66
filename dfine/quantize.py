"""Reduced-precision export (OpenVINO IR: f32, bf16-mixed, INT8), guarded.

    result = export_reduced("dfine_n.safetensors", "dfine_n_int8.xml", precision="int8",
                            calibration="data/synth", val="data/synth")
    print(result.report())

bf16: the backbone and encoder run in bf16 and the decoder — distribution heads, residual
refinement, softmax·W(n) integral, box decoding, LQE, top-k — in f32: the backend cuts the
graph at the encoder's outputs and compiles the two halves with different precision hints
(:func:`dfine.precision.split_model`). INT8: NNCF post-training quantization of the backbone
and encoder (calibrated on a folder of images or a COCO/YOLO dataset), every other part in
NNCF's ignored scope; ``reduced_parts=INT8_DECODER_PARTS`` (``--reduce backbone encoder
decoder_layers``) quantizes the decoder layers' linears too, while the self-attention's
activation products, the deformable attention's sampling (grid_sample's inputs), the
distribution heads, the FDR integral, LQE and postprocessing stay f32
(:func:`int8_ignored_scope`, :func:`dfine.precision.compile_plan`). Every reduced export measures itself against f32 (:mod:`dfine.guard`):
AP/AP50/AP75 on ``val`` when given, else box/score drift on sample images; with ``val``, the
accuracy-aware loop narrows the reduced parts to the backbone alone when the guard refuses
backbone + encoder. A refused export writes nothing. The metadata (ONNX props, or the IR's
``dfine`` rt_info section; :func:`dfine.export.read_metadata`) records the precision, the
method, the reduced parts, the calibration and the guard's measurement (and every attempt).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dfine.backends.base import check_budget
from dfine.backends.openvino import OpenVINOBackend, shared_core
from dfine.errors import InvalidArgumentError, missing
from dfine.export import export_onnx, read_metadata
from dfine.files import atomic_write
from dfine.guard import (
    DEFAULT_MAX_AP_DROP,
    GuardResult,
    evaluate,
    guard_drift,
    guard_val,
    image_files,
    load_inputs,
    load_val,
)
from dfine.precision import (
    HEAD_PARTS,
    OPENVINO_PRECISIONS,
    PARTS,
    compile_plan,
    graph_parts,
    names_in,
    normalize_precision,
)
from dfine.resources import asset_path

FORMATS = ("onnx", "openvino")
# The accuracy-aware loop: groups of parts added to the f32 set, in this order.
ESCALATION = (HEAD_PARTS, ("backbone",))
DRIFT_IMAGES = 16


@dataclass
class ReducedExport:
    path: Path
    format: str
    precision: str
    method: str
    reduced_parts: tuple[str, ...]
    guard: GuardResult | None
    attempts: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        lines = [
            f"exported {self.path} ({self.format}, {self.precision}) in {self.seconds:.0f} s: "
            f"{self.method}"
        ]
        if self.guard is not None:
            lines.append(f"accuracy guard [OK]: {self.guard.summary()}")
        return "\n".join(lines)


def _calibration_inputs(source, count: int, size: tuple[int, int], progress: bool):

    files = image_files(source, count)
    return [
        x
        for (x, _) in (
            load_inputs([f], size)[0]
            for f in tqdm(
                files, desc="calibration images", unit="img", disable=not progress, leave=False
            )
        )
    ]


def _import_nncf():
    """nncf, imported without leaving its logger class as the process's: NNCF calls
    ``logging.setLoggerClass`` when imported, so loggers that a library imported earlier
    creates later (kaleido's browser driver, through logistro) would lack their own methods
    and the next figure export would fail with an AttributeError."""
    before = logging.getLoggerClass()
    try:
        import nncf
    except ImportError as e:
        raise missing("INT8 export", "nncf") from e
    finally:
        logging.setLoggerClass(before)
    return nncf


def int8_ignored_scope(model, reduced_parts: Sequence[str]) -> set[str]:
    """Friendly names of the nodes of an exported D-FINE ``openvino.Model`` that INT8
    quantization leaves in f32: every node of the parts not in ``reduced_parts``, and in the
    decoder layers the MatMuls of two activations (self-attention's ``QKᵀ`` and
    ``softmax · V``: both operands would need per-tensor activation scales, the attention
    logits are what ranks the queries, and in f32 OpenVINO keeps its fused attention kernel).
    The deformable attention's ``grid_sample`` has no quantizable input, so its value maps and
    sampling grid stay f32 (checked by tests/test_int8_decoder.py)."""
    parts = graph_parts(model)
    ignored = names_in(parts, set(PARTS) - set(reduced_parts))
    if "decoder_layers" not in reduced_parts:
        return ignored
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() != "MatMul" or parts.get(name) != "decoder_layers":
            continue
        sources = [i.get_source_output().get_node().get_type_name() for i in op.inputs()]
        if "Constant" not in sources:
            ignored.add(name)
    return ignored


def _quantize_openvino(base, names: set[str], calib, progress: bool):
    nncf = _import_nncf()

    with _quiet(progress):
        return nncf.quantize(
            base,
            nncf.Dataset(calib, lambda x: {"images": x.numpy(), "orig_target_sizes": _sizes(x)}),
            subset_size=len(calib),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=sorted(names), validate=False),
        )


def _sizes(x):

    return np.array([[x.shape[3], x.shape[2]]] * x.shape[0], dtype=np.int64)


class _quiet:
    """NNCF logs every node it leaves out at INFO; keep its warnings only. Without
    ``progress`` (``--quiet``): its errors only, no progress bars (NNCF draws them on rich's
    console) and no "No CUDA runtime is found" warning (torch logs it when NNCF imports its
    torch extensions). Levels and settings of those libraries, restored on exit; nothing is
    redirected."""

    CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"

    def __init__(self, progress: bool) -> None:
        self.progress = progress

    def __enter__(self):
        import rich

        nncf = _import_nncf()

        self.nncf_level = nncf.common.logging.nncf_logger.level
        self.torch_level = logging.getLogger(self.CPP_EXTENSION_LOGGER).level
        self.console_quiet = rich.get_console().quiet
        nncf.common.logging.nncf_logger.setLevel(
            logging.WARNING if self.progress else logging.ERROR
        )
        if not self.progress:
            logging.getLogger(self.CPP_EXTENSION_LOGGER).setLevel(logging.ERROR)
            rich.get_console().quiet = True

    def __exit__(self, *exc):
        import rich

        nncf = _import_nncf()

        nncf.common.logging.nncf_logger.setLevel(self.nncf_level)
        logging.getLogger(self.CPP_EXTENSION_LOGGER).setLevel(self.torch_level)
        rich.get_console().quiet = self.console_quiet


def _set_metadata(model, meta: dict) -> None:
    for key, value in meta.items():
        model.set_rt_info(value if isinstance(value, str) else json.dumps(value), ["dfine", key])


def _onnx_props(path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_reduced(
    weights: str | os.PathLike,
    path: str | os.PathLike,
    *,
    format: str = "openvino",
    precision: str = "bf16",
    size: tuple[int, int] | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_size: int = 300,
    val: str | os.PathLike | None = None,
    val_size: int | None = None,
    max_ap_drop: float = DEFAULT_MAX_AP_DROP,
    reduced_parts: Sequence[str] | None = None,
    accuracy_aware: bool = True,
    progress: bool = True,
    decoder_layers: int | None = None,
    num_queries: int | None = None,
) -> ReducedExport:
    """Export ``weights`` (checkpoint, zoo name or dfine ONNX file) at ``precision``.

    ``format="openvino"``: an IR ``.xml`` (+ ``.bin``) at ``f32``, ``bf16`` or ``int8``.
    ``format="onnx"``: refused with a pointer to the ONNX paths (f32 / fp16 via
    :func:`dfine.export.export_onnx`) and to OpenVINO for bf16 / INT8.
    ``reduced_parts``: the parts (:data:`dfine.precision.PARTS`) run reduced; default the
    backbone and encoder (the decoder stays f32), narrowed to the backbone by the
    accuracy-aware loop when ``val`` is given and the guard refuses (``accuracy_aware``).
    Naming decoder parts reduces them too (the guard still applies): for INT8,
    :data:`dfine.precision.INT8_DECODER_PARTS` quantizes the decoder layers' linears while the
    FDR parts stay f32 (:func:`dfine.precision.compile_plan`); other decoder parts, or bf16
    past the encoder, are for experiments.
    ``decoder_layers`` / ``num_queries``: the inference budget exported (see
    :func:`dfine.export.export_onnx`); an ONNX ``weights`` file keeps its own.
    Raises :class:`dfine.guard.PrecisionGuardError` (one line) when the guard refuses.
    """
    start = time.perf_counter()
    if format not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    precision = normalize_precision(precision)
    allowed = OPENVINO_PRECISIONS if format == "openvino" else ()
    if precision not in allowed:
        hint = (
            "ONNX files are f32 (dfine export --format onnx) or fp16 (--half); bf16 is a "
            "runtime choice and INT8 needs OpenVINO (NNCF's ONNX backend fails on this graph): "
            f"--format openvino --precision {precision}"
            if format == "onnx"
            else "fp16 needs a GPU runtime (TensorRT: Detector(..., backend='tensorrt', "
            "precision='fp16'))"
        )
        raise InvalidArgumentError(
            f"precision {precision} is not available for format {format}: {hint}"
        )
    path = Path(path)
    suffix = ".xml" if format == "openvino" else ".onnx"
    if path.suffix != suffix:
        raise InvalidArgumentError(f"the {format} output must end with {suffix}, got {path}")
    if precision == "int8" and calibration is None:
        raise InvalidArgumentError(
            "--precision int8 needs --calibration DIR (images or a COCO/YOLO dataset)"
        )
    if calibration_size < 1:
        raise InvalidArgumentError(f"calibration_size must be >= 1, got {calibration_size}")
    if reduced_parts is not None:
        unknown = set(reduced_parts) - set(PARTS)
        if unknown or not reduced_parts:
            raise InvalidArgumentError(
                f"reduced_parts must name some of {', '.join(PARTS)}; got {list(reduced_parts)}"
            )
    valset = load_val(val, val_size) if val is not None else None

    with tempfile.TemporaryDirectory(prefix="dfine-export-") as tmp:
        tmp = Path(tmp)
        if Path(weights).suffix == ".onnx":
            onnx_path = Path(weights)
            check_budget(onnx_path, read_metadata(onnx_path), decoder_layers, num_queries)
        else:
            onnx_path = export_onnx(
                weights,
                tmp / "f32.onnx",
                size=size,
                check_parity=False,
                decoder_layers=decoder_layers,
                num_queries=num_queries,
            ).path
        meta = read_metadata(onnx_path)
        if meta["precision"] != "f32":
            raise InvalidArgumentError(
                f"{weights} is a {meta['precision']} graph; start from f32 weights"
            )
        hw = tuple(meta["input_size"])
        props = _onnx_props(onnx_path)
        base = shared_core().read_model(str(onnx_path))
        if precision == "f32":
            _set_metadata(base, {**props, "precision": "f32", "format": format, "method": "f32"})
            _save_ir(base, path)
            return ReducedExport(
                path, format, "f32", "f32", (), None, [], time.perf_counter() - start
            )

        reference = OpenVINOBackend(onnx_path, precision="f32")
        calib = (
            _calibration_inputs(calibration, calibration_size, hw, progress)
            if calibration
            else None
        )
        ref_metrics = (
            evaluate(reference.detect, valset, hw, progress, "eval f32") if valset else None
        )
        drift_inputs = None
        if valset is None:
            drift_inputs = load_inputs(
                image_files(calibration or asset_path("examples"), DRIFT_IMAGES), hw
            )
        if reduced_parts is not None:
            candidates = [tuple(reduced_parts)]
        else:
            candidates = list(
                ESCALATION if valset is not None and accuracy_aware else ESCALATION[:1]
            )
        attempts: list[dict] = []
        for reduce in candidates:
            mixed, head_precision = compile_plan(precision, reduce)
            info = {
                **props,
                "precision": precision,
                "format": format,
                "reduced_parts": list(reduce),
                "mixed": mixed,
                "head_precision": head_precision,
            }
            if precision == "bf16":
                info["method"] = (
                    f"{'+'.join(reduce)} in bf16 (OpenVINO INFERENCE_PRECISION_HINT), the rest "
                    "in f32" + (" (graph split at the encoder outputs)" if mixed == "split" else "")
                )
                model = base
                candidate = tmp / "candidate.xml"
            else:
                ignored = int8_ignored_scope(base, reduce)
                info["method"] = (
                    f"NNCF post-training INT8 of {'+'.join(reduce)} on {len(calib)} calibration "
                    "images (the other parts in the ignored scope, in f32)"
                )
                info["calibration"] = {"source": str(calibration), "images": len(calib)}
                model = _quantize_openvino(base, ignored, calib, progress)
                candidate = tmp / "candidate.xml"
            _write_candidate(model, candidate, info)
            reduced = OpenVINOBackend(candidate)
            if valset is not None:
                guard = guard_val(
                    reference.detect, reduced.detect, valset, hw, max_ap_drop, progress, ref_metrics
                )
            else:
                source = str(calibration or asset_path("examples"))
                guard = guard_drift(reference.detect, reduced.detect, drift_inputs, source)
            attempts.append({"reduced_parts": list(reduce), "guard": guard.to_dict()})
            if progress:
                print(f"  {precision} {'+'.join(reduce)}: {guard.summary()}")
            if guard.ok:
                break
        guard.check(f"the {precision} export of {weights}")  # raises before `path` is written
        info.update(guard=guard.to_dict(), attempts=attempts)
        _write_candidate(model, candidate, info)
        _move_ir(candidate, path)
    return ReducedExport(
        path,
        format,
        precision,
        info["method"],
        tuple(reduce),
        guard,
        attempts,
        time.perf_counter() - start,
    )


def _write_candidate(model, path: Path, info: dict) -> None:
    import openvino as ov

    _set_metadata(model, info)
    ov.save_model(model, str(path), compress_to_fp16=False)


def _save_ir(model, path: Path) -> None:
    import openvino as ov

    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
        ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        _move_ir(Path(tmp) / "model.xml", path)


def _move_ir(src: Path, dst: Path) -> None:
    """Move an IR pair into place: the ``.bin`` first, the ``.xml`` (what readers open) last,
    each with an atomic rename."""

    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst.with_suffix(".bin"), lambda t: shutil.copyfile(src.with_suffix(".bin"), t))
    atomic_write(dst, lambda t: shutil.copyfile(src, t))


def quantize_unguarded(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    samples: Sequence,
    reduced_parts: Sequence[str] = HEAD_PARTS,
) -> Path:
    """INT8 IR of ``reduced_parts`` calibrated on ``samples`` (``[1, 3, H, W]`` tensors),
    *without* the accuracy guard: for timing (random weights have no accuracy to guard).
    Use :func:`export_reduced` for anything that is used for its detections."""

    onnx_path, out = Path(onnx_path), Path(out)
    base = shared_core().read_model(str(onnx_path))
    ignored = int8_ignored_scope(base, reduced_parts)
    model = _quantize_openvino(base, ignored, list(samples), progress=False)
    mixed, head_precision = compile_plan("int8", reduced_parts)
    info = {
        **_onnx_props(onnx_path),
        "precision": "int8",
        "format": "openvino",
        "reduced_parts": list(reduced_parts),
        "mixed": mixed,
        "head_precision": head_precision,
        "method": f"NNCF INT8 on {len(samples)} samples, unguarded (timing only)",
    }
    _set_metadata(model, info)
    _save_ir(model, out)
    return out
