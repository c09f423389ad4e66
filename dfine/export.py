"""ONNX export with optional in-graph postprocessing, metadata and a parity report.

    result = dfine.export.export_onnx("dfine_n_coco.pth", "dfine_n.onnx")
    print(result.report())

Graph inputs: ``images`` float32 ``[N, 3, H, W]`` in [0, 1] and, with postprocessing,
``orig_target_sizes`` int64 ``[N, 2]`` as (width, height). Outputs: ``labels [N, K]`` int64,
``boxes [N, K, 4]`` float32 xyxy in original pixels, ``scores [N, K]`` float32 — as the
reference's export — or, without postprocessing, ``pred_logits [N, Q, C]`` and
``pred_boxes [N, Q, 4]`` (cxcywh, normalized).
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfine.checkpoint import load_model
from dfine.config import ABLATIONS, FAMILIES
from dfine.errors import InputFileError, InvalidArgumentError, missing
from dfine.files import atomic_write
from dfine.io import load_image
from dfine.model import DFINE
from dfine.parity import ParityReport, compare_detections, compare_outputs
from dfine.postprocess import BatchDetections, topk_detections
from dfine.precision import normalize_precision
from dfine.preprocess import to_input_tensor
from dfine.resources import example_photos

DEFAULT_OPSET = 17


class ExportWrapper(nn.Module):
    """The graph that is exported: model (+ batched top-k postprocessing)."""

    def __init__(self, model: DFINE, postprocess: bool = True, num_top: int = 300) -> None:
        super().__init__()
        self.model = model
        self.postprocess = postprocess
        self.num_top = num_top

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor | None = None):
        out = self.model(images)
        if not self.postprocess:
            return out["pred_logits"], out["pred_boxes"]
        top = topk_detections(
            out["pred_logits"], out["pred_boxes"], orig_target_sizes, self.num_top
        )
        return top.labels, top.boxes, top.scores


@dataclass
class ExportResult:
    path: Path
    input_size: tuple[int, int]
    batch: str | int
    postprocess: bool
    half: bool
    opset: int
    seconds: float
    parity: ParityReport | None = None
    parity_batch: int = 0

    def report(self) -> str:
        lines = [
            f"exported {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB) in {self.seconds:.1f} s: "
            f"opset {self.opset}, input {self.input_size[0]}x{self.input_size[1]}, batch {self.batch}, "
            f"{'with' if self.postprocess else 'without'} postprocessing, {'fp16' if self.half else 'fp32'}; "
            "onnx.checker passed",
        ]
        if self.parity is not None:
            verdict = "OK" if self.parity.ok() else "FAILED"
            lines.append(
                f"parity ONNX Runtime vs PyTorch on {self.parity_batch} image(s) [{verdict}]: "
                + self.parity.summary()
            )
        return "\n".join(lines)


def _prepare(model: DFINE | str | os.PathLike, half: bool) -> DFINE:
    if not isinstance(model, DFINE):
        model = load_model(model)
    model = copy.deepcopy(model).eval()
    if not model.deployed:
        model.deploy()
    model.deployed = False  # keep the default memory layout for the exporter
    model.to(memory_format=torch.contiguous_format)
    return model.half() if half else model.float()


def sample_images(size: tuple[int, int], count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled example photos resized to ``size``: ``[count, 3, H, W]`` and (w, h) sizes
    (fewer than ``count`` when fewer are bundled; a missing assets folder is an error)."""
    files = example_photos()[:count]
    rgbs = [load_image(f) for f in files]
    x = torch.cat([to_input_tensor(r, size) for r in rgbs])
    return x, torch.tensor([[r.shape[1], r.shape[0]] for r in rgbs])


def export_onnx(
    model: DFINE | str | os.PathLike,
    path: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    batch: str | int = "dynamic",
    postprocess: bool = True,
    half: bool = False,
    opset: int = DEFAULT_OPSET,
    num_top: int = 300,
    check_parity: bool = True,
    decoder_layers: int | None = None,
    num_queries: int | None = None,
) -> ExportResult:
    """Export to ONNX (deployed graph: conv+BN folded), check it with ``onnx.checker`` and,
    for fp32, compare ONNX Runtime with PyTorch on the example images (query-order aware).

    ``decoder_layers`` / ``num_queries``: export only the first K decoder layers on the top Q
    proposals (:meth:`dfine.model.DFINE.set_decoder_budget`; ``None`` keeps the model's own
    budget); the file's metadata records both."""
    try:
        import onnx
    except ImportError as e:
        raise missing("ONNX export", "onnx") from e

    if opset < 17:
        raise InvalidArgumentError(
            f"opset must be >= 17 (LayerNormalization, GridSample), got {opset}"
        )
    if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
        raise InvalidArgumentError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    net = _prepare(model, half)
    if decoder_layers is not None or num_queries is not None:
        net.set_decoder_budget(
            net.decoder_layers if decoder_layers is None else decoder_layers,
            net.num_queries if num_queries is None else num_queries,
        )
    size = tuple(size or net.config.eval_size)
    if len(size) != 2 or any(s % 32 or s < 64 for s in size):
        raise InvalidArgumentError(f"size must be (height, width), multiples of 32, got {size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 1 if batch == "dynamic" else batch
    dtype = torch.float16 if half else torch.float32
    images = torch.rand(n, 3, *size, dtype=dtype)
    sizes = torch.tensor([[size[1], size[0]]] * n)
    wrapper = ExportWrapper(net, postprocess, num_top).eval()
    inputs = ["images", "orig_target_sizes"] if postprocess else ["images"]
    outputs = ["labels", "boxes", "scores"] if postprocess else ["pred_logits", "pred_boxes"]
    dynamic = {name: {0: "N"} for name in inputs + outputs} if batch == "dynamic" else None
    args = (images, sizes) if postprocess else (images,)
    meta = {
        "dfine_size": net.config.size,
        "num_classes": str(net.num_classes),
        "class_names": json.dumps(list(net.class_names) if net.class_names else None),
        "input_size": json.dumps(list(size)),
        "postprocess": str(postprocess).lower(),
        "batch": str(batch),
        "precision": "fp16" if half else "fp32",
        "num_top": str(min(num_top, net.num_queries * net.num_classes)),
        "ablation": net.config.decoder.ablation,
        "family": net.config.family,
        "decoder_layers": str(net.decoder_layers),
        "num_queries": str(net.num_queries),
    }

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side constants
            torch.onnx.export(
                wrapper,
                args,
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic,
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        onnx.helper.set_model_props(proto, meta)
        onnx.save(proto, str(tmp))

    start = time.perf_counter()
    atomic_write(path, write)
    result = ExportResult(path, size, batch, postprocess, half, opset, time.perf_counter() - start)
    if check_parity and not half:
        result.parity, result.parity_batch = _parity(wrapper, path, size, batch, postprocess)
    return result


def _parity(wrapper, path, size, batch, postprocess) -> tuple[ParityReport, int]:
    import onnxruntime as ort

    count = 2 if batch == "dynamic" else batch
    x, sizes = sample_images(size, count)
    if x.shape[0] < count:
        x = x.repeat(count, 1, 1, 1)[:count]
        sizes = sizes.repeat(count, 1)[:count]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    if postprocess:
        feed["orig_target_sizes"] = sizes.numpy()
    got = [torch.from_numpy(t) for t in session.run(None, feed)]
    with torch.no_grad():
        ref = list(wrapper(x, sizes) if postprocess else wrapper(x))
    if postprocess:
        a = BatchDetections(boxes=got[1], scores=got[2], labels=got[0])
        b = BatchDetections(boxes=ref[1], scores=ref[2], labels=ref[0])
        return compare_detections(a, b, sizes), count
    return compare_outputs(got[0], got[1], ref[0], ref[1]), count


def read_metadata(path: str | os.PathLike) -> dict:
    """The dfine metadata stored in an exported ONNX file or OpenVINO IR (``.xml``): model
    size, classes, input size, postprocessing, batch, ``precision`` (``f32``, ``fp16``,
    ``bf16``, ``int8``) and, for reduced precision, how it was made and what the accuracy
    guard measured (``guard``, a dict); ``ablation`` (``none``, ``golsd`` or ``fdr``, see
    :data:`dfine.config.ABLATIONS`) when the file records it (exports since it is);
    ``decoder_layers`` and ``num_queries`` (the inference budget the graph runs, ints; None
    in files exported before they were recorded, which run every layer on 300 queries)."""
    if Path(path).suffix == ".xml":
        return _read_ir_metadata(Path(path))
    try:
        import onnx
    except ImportError as e:
        raise missing("reading an ONNX file's metadata", "onnx") from e

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if "input_size" not in props:
        raise InvalidArgumentError(f"{path} was not exported by dfine (no input_size metadata)")
    return _parse_metadata(props, str(path))


def _parse_metadata(props: dict[str, str], where: str) -> dict:

    if "input_size" not in props:
        raise InvalidArgumentError(f"{where} was not exported by dfine (no input_size metadata)")
    meta = {
        "size": props.get("dfine_size"),
        "num_classes": int(props["num_classes"]),
        "class_names": json.loads(props.get("class_names", "null")),
        "input_size": tuple(json.loads(props["input_size"])),
        "postprocess": props.get("postprocess") == "true",
        "batch": props.get("batch"),
        "precision": normalize_precision(props.get("precision", "f32")),
        # files exported before num_top was recorded kept the default 300 (or fewer pairs)
        "num_top": int(props.get("num_top", 300)),
        "decoder_layers": int(props["decoder_layers"]) if "decoder_layers" in props else None,
        "num_queries": int(props["num_queries"]) if "num_queries" in props else None,
    }
    for key in ("method", "format", "mixed", "head_precision", "ablation", "family"):
        if key in props:
            meta[key] = props[key]
    for key in ("guard", "reduced_parts", "calibration", "attempts"):
        if key in props:
            meta[key] = json.loads(props[key])
    if meta.get("ablation", "none") not in ABLATIONS:
        raise InvalidArgumentError(
            f"{where}: its ablation metadata must be one of {', '.join(ABLATIONS)}, "
            f"got {meta['ablation']!r}"
        )
    if meta.get("family", "dfine") not in FAMILIES:
        raise ValueError(
            f"{where}: its family metadata must be one of {', '.join(FAMILIES)}, "
            f"got {meta['family']!r}"
        )
    return meta


def _read_ir_metadata(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    if not path.exists():
        raise InputFileError(f"OpenVINO IR not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InvalidArgumentError(f"{path} is not an OpenVINO IR file ({e})") from e
    node = root.find("rt_info/dfine")
    if node is None:
        raise InvalidArgumentError(
            f"{path} was not exported by dfine (no dfine metadata in its rt_info)"
        )
    return _parse_metadata({child.tag: child.get("value", "") for child in node}, str(path))
