"""Reduced precision that keeps FDR's fine localization: graph parts, keep-in-f32 markings.

D-FINE's boxes come from ``Σ_n softmax(logits)(n) · W(n)`` over 33 bins per edge, refined
residually over the decoder layers; rounding the bin logits or the integral to bf16 moves
every edge by a fraction of a bin, which costs AP at tight IoU (AP75) while AP50 does not
move. This module names the parts of an exported graph so that backends can keep the
sensitive ones in f32 while the backbone and encoder run reduced:

    parts = graph_parts(ov_model)                   # friendly name -> part
    keep = names_in(parts, FDR_PARTS)               # nodes to keep in f32

Parts (by the module scope the ONNX exporter writes into node names):

======================  ===================================================================
``backbone``            HGNetv2
``encoder``             HybridEncoder (AIFI + CCFF)
``query_selection``     enc_output, enc_score_head, enc_bbox_head, top-k of the encoder
``decoder_layers``      self-/cross-attention, gateway, FFN of every decoder layer
``query_pos``           the query position MLP
``distribution_heads``  dec_bbox_head / pre_bbox_head (per-edge bin logits)
``fdr_math``            residual accumulation, softmax·W(n) integral, distance2bbox
``score_lqe``           dec_score_head + LQE
``postprocess``         top-k over scores, boxes to pixels
======================  ===================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from dfine.errors import InvalidArgumentError

PRECISIONS = ("f32", "bf16", "int8", "fp16")
"""Every precision a graph runs at (fp16: TensorRT and fp16 ONNX exports)."""
OPENVINO_PRECISIONS = ("f32", "bf16", "int8")
"""The precisions OpenVINO runs and the accuracy guard checks (bf16 and int8 reduce
:data:`HEAD_PARTS`, the FDR decoder stays f32)."""
PARTS = (
    "backbone",
    "encoder",
    "query_selection",
    "decoder_layers",
    "query_pos",
    "distribution_heads",
    "fdr_math",
    "score_lqe",
    "postprocess",
)
# The parts kept in f32 by the FDR-aware mixed precision (chosen by measurement, see
# benchmarks/results/precision_cpu.md).
FDR_PARTS = ("distribution_heads", "fdr_math", "score_lqe", "postprocess")

_SCOPES = (
    (re.compile(r"^/model/backbone/"), "backbone"),
    (re.compile(r"^/model/encoder/"), "encoder"),
    (re.compile(r"^/model/decoder/(enc_output|enc_score_head|enc_bbox_head)"), "query_selection"),
    (re.compile(r"^/model/decoder/TopK"), "query_selection"),
    (re.compile(r"^/model/decoder/layers\."), "decoder_layers"),
    (re.compile(r"^/model/decoder/query_pos_head"), "query_pos"),
    (re.compile(r"^/model/decoder/(dec_bbox_head|pre_bbox_head)"), "distribution_heads"),
    (re.compile(r"^/model/decoder/(dec_score_head|lqe_layers)"), "score_lqe"),
    (re.compile(r"^/model/decoder/"), "fdr_math"),
    (re.compile(r"^/[A-Z]"), "postprocess"),
)


def check_precision(precision: str, allowed: Iterable[str] = PRECISIONS) -> str:
    """``precision`` if it is one of ``allowed``, else one clear ``ValueError``."""
    allowed = tuple(allowed)
    if precision not in allowed:
        raise InvalidArgumentError(
            f"precision must be one of {', '.join(allowed)}; got {precision!r}"
        )
    return precision


_ALIASES = {"fp32": "f32", "float32": "f32", "bfloat16": "bf16", "f16": "fp16", "float16": "fp16"}


def normalize_precision(precision: str) -> str:
    """The project's name of a precision (``fp32`` → ``f32``, ``f16`` → ``fp16``, ...)."""
    name = str(precision).lower()
    name = _ALIASES.get(name, name)
    return check_precision(name)


def part_of(name: str) -> str | None:
    """The part of a node by its (ONNX / OpenVINO friendly) name; ``None`` when the name
    carries no scope (nodes the runtime created, constants)."""
    for pattern, part in _SCOPES:
        if pattern.search(name):
            return part
    return None


def graph_parts(model) -> dict[str, str]:
    """``friendly name -> part`` for every operation of an ``openvino.Model``. Nodes without
    a scoped name take the part of their nearest scoped consumer (else producer)."""
    ops = list(model.get_ordered_ops())
    parts: dict[str, str | None] = {
        op.get_friendly_name(): part_of(op.get_friendly_name()) for op in ops
    }
    consumers = {
        op.get_friendly_name(): [
            t.get_node().get_friendly_name()
            for out in op.outputs()
            for t in out.get_target_inputs()
        ]
        for op in ops
    }
    for op in reversed(ops):  # consumers come later in topological order
        name = op.get_friendly_name()
        if parts[name] is None:
            parts[name] = next((parts[c] for c in consumers[name] if parts.get(c)), None)
    for op in ops:
        name = op.get_friendly_name()
        if parts[name] is None:
            parts[name] = next(
                (
                    parts[i.get_source_output().get_node().get_friendly_name()]
                    for i in op.inputs()
                    if parts.get(i.get_source_output().get_node().get_friendly_name())
                ),
                None,
            )
    return {k: v or "postprocess" for k, v in parts.items()}


def names_in(parts: Mapping[str, str], wanted: Iterable[str]) -> set[str]:
    """Friendly names of the nodes whose part is in ``wanted``."""
    wanted = set(wanted)
    unknown = wanted - set(PARTS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown graph parts {sorted(unknown)}; known: {', '.join(PARTS)}"
        )
    return {name for name, part in parts.items() if part in wanted}


def mark_keep_f32(model, names: Iterable[str]):
    """A copy of the ``openvino.Model`` whose operations named in ``names`` carry OpenVINO's
    keep-original-precision attribute (IR ``<attribute name="precise" version="0"/>``, read
    back as ``DisablePrecisionConversion``): the CPU plugin then runs them in f32 under an
    ``INFERENCE_PRECISION_HINT`` of bf16. The attribute has no Python constructor, so the
    model makes a round trip through IR XML (in memory)."""
    import tempfile
    import xml.etree.ElementTree as ET
    from pathlib import Path

    import openvino as ov

    names = set(names)
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
        tree = ET.parse(xml_path)
        weights = np.fromfile(xml_path.with_suffix(".bin"), dtype=np.uint8)
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") in names and layer.get("type") not in _UNMARKED:
            rt = layer.find("rt_info")
            if rt is None:
                rt = ET.SubElement(layer, "rt_info")
            ET.SubElement(rt, "attribute", {"name": "precise", "version": "0"})
    text = ET.tostring(tree.getroot(), encoding="unicode")
    return ov.Core().read_model(text, ov.Tensor(weights))


_UNMARKED = ("Const", "Parameter", "Result")


def untie_fully_connected(model, names: set[str]) -> int:
    """Rewrite the ``x @ Wᵀ`` MatMuls named in ``names`` (constant ``W``) as
    ``(W @ xᵀ)ᵀ``, in place; returns how many. The CPU plugin turns an ``x @ Wᵀ`` MatMul into a
    new FullyConnected node, which drops the keep-in-f32 attribute and runs in bf16; a MatMul
    whose constant comes first stays a MatMul and honours it. A 1-D ``W`` (the softmax·W(n)
    integral) is treated as ``[1, n]`` and the result squeezed back. Names carry over (new
    nodes get suffixes and are added to ``names``)."""
    import openvino.opset13 as ops

    count = 0
    for op in list(model.get_ordered_ops()):
        name = op.get_friendly_name()
        if op.get_type_name() != "MatMul" or name not in names:
            continue
        source = op.input_value(1).get_node()
        if source.get_type_name() != "Constant" or op.get_attributes()["transpose_a"]:
            continue
        rank = op.input_value(0).get_partial_shape().rank
        w_rank = source.get_output_partial_shape(0).rank.get_length()
        if rank.is_dynamic or rank.get_length() < 2 or w_rank not in (1, 2):
            continue
        r = rank.get_length()
        w = source.get_data()
        w = w[None] if w_rank == 1 else (w if op.get_attributes()["transpose_b"] else w.T)
        perm = ops.constant(np.array([*range(r - 2), r - 1, r - 2], dtype=np.int64))
        xt = ops.transpose(op.input_value(0), perm)
        mm = ops.matmul(ops.constant(np.ascontiguousarray(w)), xt, False, False)
        back = ops.transpose(mm, perm)
        new = [(xt, "/untie_in"), (mm, ""), (back, "/untie_out")]
        if w_rank == 1:
            back = ops.squeeze(back, ops.constant(np.array([r - 1], dtype=np.int64)))
            new.append((back, "/untie_squeeze"))
        _replace(op, back, new, names)
        count += 1
    model.validate_nodes_and_infer_types()
    return count


def stabilize(model, names: set[str]) -> int:
    """Rewrite operations named in ``names`` that the CPU plugin would replace by new nodes
    (which lose the keep-in-f32 attribute), in place, into forms it keeps: Softmax-8 → Softmax-1
    (positive axis), division by a constant → multiplication by its reciprocal, and the
    FullyConnected-bound MatMuls (:func:`untie_fully_connected`). Returns how many."""
    import openvino.opset1 as ops1
    import openvino.opset13 as ops

    count = 0
    for op in list(model.get_ordered_ops()):
        name = op.get_friendly_name()
        if name not in names:
            continue
        kind = op.get_type_info()
        if kind.name == "Softmax" and kind.version_id == "opset8":
            axis = op.get_attributes()["axis"]
            rank = op.input_value(0).get_partial_shape().rank.get_length()
            _replace(op, ops1.softmax(op.input_value(0), axis % rank), [], names, keep_name=True)
            count += 1
        elif kind.name == "Divide":
            divisor = op.input_value(1).get_node()
            if divisor.get_type_name() != "Constant" or divisor.get_element_type().is_integral():
                continue
            inverse = ops.constant((1.0 / divisor.get_data()).astype(np.float32))
            _replace(op, ops.multiply(op.input_value(0), inverse), [], names, keep_name=True)
            count += 1
        elif kind.name == "Subtract" and op.get_element_type().is_real():
            minus = ops.constant(np.array(-1.0, dtype=np.float32))
            negated = ops.multiply(op.input_value(1), minus)
            _replace(
                op, ops.add(op.input_value(0), negated), [(negated, "/neg")], names, keep_name=True
            )
            count += 1
    return count + untie_fully_connected(model, names)


def _replace(op, last, new: list, names: set[str], keep_name: bool = False) -> None:
    name = op.get_friendly_name()
    if keep_name:
        new = [*new, (last, "")]
    for node, suffix in new:
        node.set_friendly_name(name + suffix)
        names.add(name + suffix)
    for target in list(op.output(0).get_target_inputs()):
        target.replace_source_output(last.output(0))


def runtime_precisions(compiled) -> dict[str, dict[str, int]]:
    """``part -> {runtime precision: count}`` of the float operations of a compiled model
    (``openvino.CompiledModel``), by their original layer names: how much of each part the
    plugin actually runs in bf16."""
    counts: dict[str, dict[str, int]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        precision = info["runtimePrecision"].astype(str)
        kind = info["layerType"].astype(str)
        if precision not in ("f32", "bf16") or kind in ("Input", "Output", "Const", "Reorder"):
            continue
        first = info["originalLayersNames"].astype(str).split(",")[0]
        part = part_of(first) or "unscoped"
        counts.setdefault(part, {}).setdefault(precision, 0)
        counts[part][precision] += 1
    return counts


def keep_in_f32(model, parts: Iterable[str] = FDR_PARTS):
    """A copy of the ``openvino.Model`` (an exported D-FINE graph) whose ``parts`` run in f32
    under a reduced ``INFERENCE_PRECISION_HINT``, all else reduced."""
    from openvino.passes import ConstantFolding, Manager

    model = model.clone()
    names = names_in(graph_parts(model), parts)
    manager = Manager()
    manager.register_pass(ConstantFolding())  # W(n), 1/reg_scale: constants the rewrites need
    manager.run_passes(model)
    names |= names_in(graph_parts(model), parts)
    stabilize(model, names)
    return mark_keep_f32(model, names)


HEAD_PARTS = ("backbone", "encoder")
INT8_DECODER_PARTS = (*HEAD_PARTS, "decoder_layers")
"""INT8 with the decoder layers' linears (self-attention in/out projections, sampling-offset
and attention-weight linears, the deformable attention's output projection, the gateway and
the FFN) quantized too; the distribution heads, the FDR integral, LQE and postprocessing stay
f32 (see benchmarks/results/precision_cpu.md for what it buys on a CPU)."""


def compile_plan(precision: str, reduced_parts: Iterable[str]) -> tuple[str, str]:
    """``(mixed, head_precision)``: how an OpenVINO backend compiles a graph whose
    ``reduced_parts`` run at ``precision`` ("bf16" or "int8"), keeping every other part f32.

    bf16 is a precision *hint*, so it can only be confined by the graph split: the head
    (backbone / encoder) at the bf16 hint, the tail at f32; bf16 parts past the encoder
    need the whole graph at the bf16 hint (``"none"``, FDR included). INT8 is carried by the
    graph's own quantize nodes, which run INT8 under any hint: the reduced head parts are cut
    off and compiled at the bf16 hint (their float leftovers on a bf16 CPU), the tail (INT8
    decoder layers included) at f32, so the FDR parts stay exact f32; with no head part
    reduced the whole graph compiles at f32."""
    reduced = set(reduced_parts)
    head = reduced & set(HEAD_PARTS)
    if precision == "int8":
        return ("split", "bf16") if head else ("none", "f32")
    return ("split", "bf16") if head and reduced <= set(HEAD_PARTS) else ("none", "bf16")


def split_model(model, head_parts: Iterable[str] = HEAD_PARTS):
    """Cut an exported D-FINE ``openvino.Model`` where the decoder reads the encoder's
    feature maps: ``(head, tail, cut_names)``. ``head``: ``images`` → the feature maps (named
    ``feat0``, ``feat1``, ...); ``tail``: the feature maps, ``images`` (its shape only) and
    ``orig_target_sizes`` → the original outputs. Compiled with different precision hints, the
    two run the backbone and encoder reduced and everything FDR touches in exact f32 — the
    mixed precision that the CPU plugin's per-node markings cannot express (it re-creates
    fused and decomposed nodes without them; see benchmarks/results/precision_cpu.md)."""
    import openvino as ov
    import openvino.opset13 as ops

    head_parts = set(head_parts)

    def cuts_of(m):
        parts = graph_parts(m)
        found = {}
        for op in m.get_ordered_ops():
            if parts[op.get_friendly_name()] in head_parts:
                continue
            for inp in op.inputs():
                src = inp.get_source_output()
                node = src.get_node()
                if (
                    parts.get(node.get_friendly_name()) in head_parts
                    and node.get_type_name() not in ("Constant", "ShapeOf", "Parameter")
                    and src.get_element_type().is_real()
                ):
                    found.setdefault((node.get_friendly_name(), src.get_index()), src)
        return [found[k] for k in sorted(found)]

    cuts = cuts_of(model)
    if not cuts:
        raise ValueError("no boundary between the encoder and the decoder found in this graph")
    images = next(p for p in model.get_parameters() if p.get_friendly_name() == "images")
    results = []
    for i, c in enumerate(cuts):
        r = ops.result(c)
        r.set_friendly_name(f"feat{i}")
        results.append(r)
    head = ov.Model(results, [images], "dfine_head")
    tail_src = model.clone()
    params = []
    for i, c in enumerate(cuts_of(tail_src)):
        p = ops.parameter(c.get_partial_shape(), np.float32, name=f"feat{i}")
        p.output(0).get_tensor().set_names({f"feat{i}"})
        for target in list(c.get_target_inputs()):
            target.replace_source_output(p.output(0))
        params.append(p)
    tail = ov.Model(tail_src.get_results(), params + list(tail_src.get_parameters()), "dfine_tail")
    return head, tail, [f"feat{i}" for i in range(len(cuts))]
