"""Hugging Face (transformers) layout of D-FINE checkpoints: read, convert, write.

A transformers checkpoint is a directory with ``config.json`` (a ``DFineConfig``) and
``model.safetensors`` (or ``pytorch_model.bin``, or a sharded index of either). Compared with the
reference layout its state dict

- lives under ``model.`` with other module names (``model.backbone.model.embedder.stem1.
  convolution``, ``model.encoder.fpn_blocks.0.csp_rep1``, ``model.decoder.layers.0.encoder_attn``,
  ``model.decoder.class_embed``, ...);
- splits every ``nn.MultiheadAttention`` input projection into ``q_proj``/``k_proj``/``v_proj``
  (the reference stores one ``in_proj_weight`` with rows q, k, v);
- drops ``decoder.anchors``/``decoder.valid_mask`` (transformers computes anchors per input), the
  ``decoder.decoder.up``/``decoder.decoder.reg_scale`` aliases, and the backbone's
  ``num_batches_tracked`` (frozen batch norms); ``reg_scale`` is a float there, int64 here.

Files saved by transformers 5 use the hub names (``fc1``/``fc2``, ``self_attn.out_proj``,
``model.encoder.encoder.N``); the names of its in-memory modules (``mlp.layers.0``, ``o_proj``,
``model.encoder.aifi.N``) are accepted too.

Semantic differences of transformers' implementation, relevant when comparing outputs:

- AIFI position embedding: transformers lays the 2-D sin-cos embedding out row-major over
  (H, W); the reference flattens ``meshgrid(arange(W), arange(H))``. Both agree on square
  feature maps only (e.g. 640x640 inputs); on non-square inputs the outputs differ.
  transformers also computes it in float64 (rounding-level differences).
- With ``eval_size`` set in ``config.json``, transformers runs AIFI *without* any position
  embedding in eval mode; the reference (and this project) always adds it.
- Anchors of invalid positions are ``finfo.max`` instead of ``inf`` (same sigmoid, same boxes).
- ``RepNCSPELAN4``'s own convs always use SiLU in transformers, whatever
  ``activation_function`` says; the reference uses the configured activation everywhere.
- The attention kernel (eager/sdpa) is transformers' choice; rounding-level differences only.

Nothing here imports transformers: reading needs only ``json``, ``safetensors`` and ``torch``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from dfine.checkpoint import ALIASES, METADATA_KEY, CheckpointError, infer_config
from dfine.config import (
    HGNETV2_ARCHS,
    PRESETS,
    BackboneConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
)
from dfine.nn.decoder import DFINEDecoder

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_NAME = "pytorch_model.bin"
WEIGHT_NAMES = (SAFETENSORS_NAME, TORCH_NAME)
INDEX_NAMES = (SAFETENSORS_NAME + ".index.json", TORCH_NAME + ".index.json")
DEFAULT_INPUT_SIZE = (640, 640)

# HGNetV2Config defaults (transformers), used for fields a config.json leaves out
HGNETV2_DEFAULTS: dict[str, Any] = {
    "num_channels": 3,
    "hidden_act": "relu",
    "stem_channels": [3, 32, 48],
    "stem_strides": [2, 1, 1, 2, 1],
    "stage_in_channels": [48, 128, 512, 1024],
    "stage_mid_channels": [48, 96, 192, 384],
    "stage_out_channels": [128, 512, 1024, 2048],
    "stage_num_blocks": [1, 1, 3, 1],
    "stage_downsample": [False, True, True, True],
    "stage_downsample_strides": [2, 2, 2, 2],
    "stage_light_block": [False, False, True, True],
    "stage_kernel_size": [3, 3, 5, 5],
    "stage_numb_of_layers": [6, 6, 6, 6],
    "use_learnable_affine_block": False,
    "out_indices": [2, 3, 4],
}

# DFineConfig defaults (transformers 5), used for fields a config.json leaves out
DFINE_DEFAULTS: dict[str, Any] = {
    "layer_norm_eps": 1e-5,
    "batch_norm_eps": 1e-5,
    "encoder_hidden_dim": 256,
    "encoder_in_channels": [512, 1024, 2048],
    "feat_strides": [8, 16, 32],
    "encoder_layers": 1,
    "encoder_ffn_dim": 1024,
    "encoder_attention_heads": 8,
    "dropout": 0.0,
    "encode_proj_layers": [2],
    "positional_encoding_temperature": 10000,
    "encoder_activation_function": "gelu",
    "activation_function": "silu",
    "eval_size": None,
    "normalize_before": False,
    "hidden_expansion": 1.0,
    "d_model": 256,
    "num_queries": 300,
    "decoder_in_channels": [256, 256, 256],
    "decoder_ffn_dim": 1024,
    "num_feature_levels": 3,
    "decoder_n_points": 4,
    "decoder_layers": 6,
    "decoder_attention_heads": 8,
    "decoder_activation_function": "relu",
    "num_denoising": 100,
    "label_noise_ratio": 0.5,
    "box_noise_scale": 1.0,
    "learn_initial_query": False,
    "anchor_image_size": None,
    "with_box_refine": True,
    "eval_idx": -1,
    "layer_scale": 1.0,
    "max_num_bins": 32,
    "reg_scale": 4.0,
    "depth_mult": 1.0,
    "top_prob_values": 4,
    "lqe_hidden_dim": 64,
    "lqe_layers": 2,
    "decoder_offset_scale": 0.5,
    "decoder_method": "default",
    "up": 0.5,
}

# fields whose value is fixed in this project (and in the reference code)
FIXED_FIELDS: dict[str, Any] = {
    "layer_norm_eps": 1e-5,
    "batch_norm_eps": 1e-5,
    "normalize_before": False,
    "learn_initial_query": False,
    "with_box_refine": True,
    "top_prob_values": 4,
    "lqe_hidden_dim": 64,
    "lqe_layers": 2,
    "decoder_offset_scale": 0.5,
    "decoder_method": "default",
    "activation_function": "silu",
}
FIXED_BACKBONE_FIELDS: dict[str, Any] = {
    "num_channels": 3,
    "hidden_act": "relu",
    "stem_strides": [2, 1, 1, 2, 1],
    "stage_downsample_strides": [2, 2, 2, 2],
}

# Config fields that only matter for training; a difference from the preset is tolerated.
TRAINING_ONLY = frozenset(
    {"dropout", "label_noise_ratio", "box_noise_scale", "freeze_norm", "freeze_stem"}
)


# ---------------------------------------------------------------------------- key mapping
# (transformers hub template, reference template, token map for {rest}); {i}, {j} are numbers.
# Token maps rename the start of {rest}: (hub, reference) prefix pairs, first match wins.
_SEQ_CONV = (("0.", "conv."), ("1.", "norm."))
_ENC_OUTPUT = (("0.", "proj."), ("1.", "norm."))
_ELAN = (
    ("conv1.", "cv1."),
    ("csp_rep1.", "cv2.0."),
    ("conv2.", "cv2.1."),
    ("csp_rep2.", "cv3.0."),
    ("conv3.", "cv3.1."),
    ("conv4.", "cv4."),
)
_ATTN = (
    *((f"self_attn.{p}_proj.", f"self_attn.{p}_proj.") for p in "qkv"),
    ("self_attn.out_proj.", "self_attn.out_proj."),
    ("fc1.", "linear1."),
    ("fc2.", "linear2."),
    ("self_attn_layer_norm.", "norm1."),
)
_ENC_LAYER = (*_ATTN, ("final_layer_norm.", "norm2."))
_DEC_LAYER = (
    *_ATTN,
    ("encoder_attn.", "cross_attn."),
    ("gateway.", "gateway."),
    ("final_layer_norm.", "norm3."),
)
_BACKBONE = "backbone"  # component-wise renaming, see _rename_backbone

KEY_TABLE: tuple[tuple[str, str, Any], ...] = (
    ("model.backbone.model.embedder.{rest}", "backbone.stem.{rest}", _BACKBONE),
    ("model.backbone.model.encoder.stages.{rest}", "backbone.stages.{rest}", _BACKBONE),
    ("model.encoder_input_proj.{i}.{rest}", "encoder.input_proj.{i}.{rest}", _SEQ_CONV),
    (
        "model.encoder.encoder.{i}.layers.{j}.{rest}",
        "encoder.encoder.{i}.layers.{j}.{rest}",
        _ENC_LAYER,
    ),
    ("model.encoder.lateral_convs.{rest}", "encoder.lateral_convs.{rest}", None),
    ("model.encoder.fpn_blocks.{i}.{rest}", "encoder.fpn_blocks.{i}.{rest}", _ELAN),
    ("model.encoder.pan_blocks.{i}.{rest}", "encoder.pan_blocks.{i}.{rest}", _ELAN),
    (
        "model.encoder.downsample_convs.{i}.{rest}",
        "encoder.downsample_convs.{i}.0.{rest}",
        (("conv1.", "cv1."), ("conv2.", "cv2.")),
    ),
    ("model.decoder.layers.{i}.{rest}", "decoder.decoder.layers.{i}.{rest}", _DEC_LAYER),
    ("model.decoder.lqe_layers.{rest}", "decoder.decoder.lqe_layers.{rest}", None),
    ("model.decoder.class_embed.{rest}", "decoder.dec_score_head.{rest}", None),
    ("model.decoder.bbox_embed.{rest}", "decoder.dec_bbox_head.{rest}", None),
    ("model.decoder.pre_bbox_head.{rest}", "decoder.pre_bbox_head.{rest}", None),
    ("model.decoder.query_pos_head.{rest}", "decoder.query_pos_head.{rest}", None),
    ("model.decoder.up", "decoder.up", None),
    ("model.decoder.reg_scale", "decoder.reg_scale", None),
    ("model.decoder_input_proj.{i}.{rest}", "decoder.input_proj.{i}.{rest}", _SEQ_CONV),
    ("model.denoising_class_embed.{rest}", "decoder.denoising_class_embed.{rest}", None),
    ("model.enc_output.{rest}", "decoder.enc_output.{rest}", _ENC_OUTPUT),
    ("model.enc_score_head.{rest}", "decoder.enc_score_head.{rest}", None),
    ("model.enc_bbox_head.{rest}", "decoder.enc_bbox_head.{rest}", None),
)
# in-memory names of transformers 5 → the hub names its files use
_HUB_ALIASES = (
    (re.compile(r"^model\.encoder\.aifi\.(\d+)\.layers\."), r"model.encoder.encoder.\1.layers."),
    (re.compile(r"(layers\.\d+\.)mlp\.layers\.0\."), r"\1fc1."),
    (re.compile(r"(layers\.\d+\.)mlp\.layers\.1\."), r"\1fc2."),
    (re.compile(r"\.self_attn\.o_proj\."), ".self_attn.out_proj."),
)
# top-level heads tied to model.decoder.{class,bbox}_embed in DFineForObjectDetection
_TIED_HEADS = re.compile(r"^(class_embed|bbox_embed)\.")
_BACKBONE_TOKENS = (("convolution", "conv"), ("normalization", "bn"))
_QKV = re.compile(r"^(?P<prefix>.*\.self_attn\.)(?P<p>[qkv])_proj\.(?P<kind>weight|bias)$")


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + pattern.replace(r"\{rest\}", r"(?P<rest>.+)") + "$")


_FORWARD = [(_compile(h), r, tokens) for h, r, tokens in KEY_TABLE]
_REVERSE = [(_compile(r), h, tokens) for h, r, tokens in KEY_TABLE]


def _rename_backbone(rest: str, to_reference: bool) -> str:
    pairs = _BACKBONE_TOKENS if to_reference else [(b, a) for a, b in _BACKBONE_TOKENS]
    table = dict(pairs)
    return ".".join(table.get(part, part) for part in rest.split("."))


def _rename_rest(rest: str, tokens: Any, to_reference: bool) -> str | None:
    if tokens is None:
        return rest
    if tokens == _BACKBONE:
        return _rename_backbone(rest, to_reference)
    for hub, ref in tokens:
        src, dst = (hub, ref) if to_reference else (ref, hub)
        if rest.startswith(src):
            return dst + rest[len(src) :]
    return None


def _rename(key: str, table: list, to_reference: bool) -> str | None:
    for pattern, template, tokens in table:
        m = pattern.match(key)
        if m is None:
            continue
        groups = m.groupdict()
        if "rest" in groups:
            rest = _rename_rest(groups["rest"], tokens, to_reference)
            if rest is None:
                return None
            groups["rest"] = rest
        return template.format(**groups)
    return None


def hub_key(key: str) -> str:
    """A transformers key in the names its saved files use (``fc1``, ``out_proj``, ...)."""
    for pattern, repl in _HUB_ALIASES:
        key = pattern.sub(repl, key)
    return key


def hf_key_to_reference(key: str) -> str | None:
    """The reference name of a transformers key (q/k/v keys keep their split names), or None."""
    return _rename(hub_key(key), _FORWARD, to_reference=True)


def reference_key_to_hf(key: str) -> str | None:
    """The transformers (hub) name of a reference key, or None when transformers has none."""
    return _rename(key, _REVERSE, to_reference=False)


# ---------------------------------------------------------------------------- state dicts
def _merge_qkv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``*.self_attn.{q,k,v}_proj.{weight,bias}`` by ``in_proj_{weight,bias}`` (rows
    q, k, v, as ``nn.MultiheadAttention`` stores them)."""
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _QKV.match(key)
        if m is None:
            out[key] = value
        else:
            groups.setdefault((m["prefix"], m["kind"]), {})[m["p"]] = value
    for (prefix, kind), parts in groups.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            names = ", ".join(f"{prefix}{p}_proj.{kind}" for p in missing)
            raise CheckpointError(f"attention projection incomplete: {names} missing")
        out[f"{prefix}in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def _split_qkv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = re.match(r"^(.*\.self_attn\.)in_proj_(weight|bias)$", key)
        if m is None:
            out[key] = value
            continue
        for p, part in zip("qkv", value.chunk(3, dim=0)):
            out[f"{m[1]}{p}_proj.{m[2]}"] = part.clone()
    return out


def _level_shapes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """Feature-map sizes of every decoder level at ``cfg.eval_size`` (as ``DFINEDecoder``)."""
    strides = list(cfg.decoder.feat_strides)
    while len(strides) < cfg.decoder.num_levels:
        strides.append(strides[-1] * 2)
    h, w = cfg.eval_size
    return [(int(h / s), int(w / s)) for s in strides]


def reference_anchors(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoder.anchors`` and ``decoder.valid_mask`` as the reference stores them for
    ``cfg.eval_size`` (computed by :meth:`DFINEDecoder.generate_anchors`)."""
    shim = types.SimpleNamespace(cfg=cfg.decoder)  # generate_anchors only reads self.cfg.eps
    return DFINEDecoder.generate_anchors(shim, _level_shapes(cfg))


def _scalar(sd: Mapping[str, torch.Tensor], key: str, default: float) -> float:
    return float(sd[key].reshape(-1)[0]) if key in sd else float(default)


def _decoder_buffers(sd: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """up (float32), reg_scale (int64, like the reference), their aliases, anchors, valid_mask."""
    up = _scalar(sd, "decoder.up", cfg.decoder.up)
    reg_scale = _scalar(sd, "decoder.reg_scale", cfg.decoder.reg_scale)
    if reg_scale != round(reg_scale):
        raise CheckpointError(
            f"reg_scale {reg_scale} is not an integer; the reference layout stores it as int64"
        )
    anchors, valid_mask = reference_anchors(cfg)
    out = {
        "decoder.up": torch.tensor([up], dtype=torch.float32),
        "decoder.reg_scale": torch.tensor([round(reg_scale)], dtype=torch.int64),
        "decoder.anchors": anchors,
        "decoder.valid_mask": valid_mask,
    }
    for alias, source in ALIASES.items():
        out[alias] = out[source]
    return out


def _fix_batch_norm_counters(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """``num_batches_tracked`` exists for every ``nn.BatchNorm2d`` of the reference, i.e. all
    batch norms except the backbone's when it uses frozen batch norms (L, X)."""
    for key in [k for k in sd if k.endswith(".running_var")]:
        counter = key[: -len("running_var")] + "num_batches_tracked"
        frozen = key.startswith("backbone.") and cfg.backbone.freeze_norm
        if frozen:
            sd.pop(counter, None)
        elif counter not in sd:
            sd[counter] = torch.tensor(0, dtype=torch.int64)


def _drop_tied_duplicates(hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Top-level ``class_embed.*``/``bbox_embed.*`` are tied copies of ``model.decoder.*``;
    keep them only where the decoder copy is absent."""
    out = {}
    for key, value in hf_sd.items():
        if _TIED_HEADS.match(key):
            if "model.decoder." + key in hf_sd:
                continue
            key = "model.decoder." + key
        out[key] = value
    return out


def hf_to_reference_state_dict(
    hf_sd: Mapping[str, torch.Tensor], model_config: ModelConfig
) -> dict[str, torch.Tensor]:
    """A transformers-layout state dict in the reference layout, loadable by ``DFINE``.

    Renames keys, merges q/k/v into ``in_proj_weight``/``in_proj_bias``, adds the BatchNorm
    counters and the buffers the transformers layout drops (anchors and valid mask for
    ``model_config.eval_size``, ``up``, int64 ``reg_scale`` and their aliases). Raises
    :class:`CheckpointError` naming keys it cannot place.
    """
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in _drop_tied_duplicates(hf_sd).items():
        if key.endswith(("anchors", "valid_mask")) and key.startswith("model."):
            continue  # generated below for the eval size
        new = hf_key_to_reference(key)
        if new is None:
            unknown.append(key)
        else:
            renamed[new] = value
    if unknown:
        more = f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""
        raise CheckpointError(
            f"{len(unknown)} weights have no place in a D-FINE model: "
            + ", ".join(unknown[:8])
            + more
        )
    sd = _merge_qkv(renamed)
    for key in [k for k in sd if k.endswith("num_points_scale")]:
        sd[key] = sd[key].float()
    _fix_batch_norm_counters(sd, model_config)
    sd.update(_decoder_buffers(sd, model_config))
    return sd


def reference_to_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference-layout state dict in the transformers hub layout (what ``save_pretrained``
    writes for a ``DFineForObjectDetection`` with frozen backbone batch norms)."""
    out: dict[str, torch.Tensor] = {}
    skip = {"decoder.anchors", "decoder.valid_mask", *ALIASES}
    for key, value in _split_qkv(dict(sd)).items():
        if key in skip:
            continue
        if key.startswith("backbone.") and key.endswith(".num_batches_tracked"):
            continue
        new = reference_key_to_hf(key)
        if new is None:
            raise CheckpointError(f"no transformers name for reference key {key}")
        if key == "decoder.reg_scale":
            value = value.float()
        out[new] = value
    return out


# ---------------------------------------------------------------------------- configs
def _get(cfg: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> Any:
    value = cfg.get(key)
    return defaults.get(key) if value is None else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _check_fixed(cfg: Mapping[str, Any], fixed: Mapping[str, Any], where: str) -> list[str]:
    problems = []
    for key, want in fixed.items():
        value = cfg.get(key, want)
        if value is not None and not _same(value, want):
            problems.append(f"{where}{key}={value!r} (only {want!r} is supported)")
    return problems


def _backbone_name(bb: Mapping[str, Any]) -> str:
    """The HGNetV2 variant (B0..B5) whose stem and stages equal the backbone config's."""
    stem = tuple(_get(bb, "stem_channels", HGNETV2_DEFAULTS))
    fields = (
        "stage_in_channels",
        "stage_mid_channels",
        "stage_out_channels",
        "stage_num_blocks",
        "stage_downsample",
        "stage_light_block",
        "stage_kernel_size",
        "stage_numb_of_layers",
    )
    columns = [list(_get(bb, f, HGNETV2_DEFAULTS)) for f in fields]
    stages = [tuple(col[i] for col in columns) for i in range(len(columns[0]))]
    for name, arch in HGNETV2_ARCHS.items():
        # ours: (in, mid, out, blocks, downsample, light, kernel, layers)
        ours = [tuple(s) for s in arch["stages"]]
        if tuple(arch["stem"]) == stem and [tuple(s) for s in stages] == ours:
            return name
    raise CheckpointError(
        f"backbone_config (stem_channels={list(stem)}, stage_out_channels="
        f"{columns[2]}, stage_numb_of_layers={columns[7]}) is not one of the HGNetV2 variants "
        f"{', '.join(HGNETV2_ARCHS)}"
    )


def _return_idx(bb: Mapping[str, Any]) -> tuple[int, ...]:
    if bb.get("out_indices") is not None:
        indices = list(bb["out_indices"])
    elif bb.get("out_features") is not None:
        indices = [int(str(f).removeprefix("stage")) for f in bb["out_features"]]
    else:
        indices = list(HGNETV2_DEFAULTS["out_indices"])
    if any(i < 1 or i > 4 for i in indices):
        raise CheckpointError(f"backbone out_indices {indices} must name stages 1..4")
    return tuple(i - 1 for i in indices)


def _size_for(backbone: str, levels: int) -> str:
    for size, preset in PRESETS.items():
        if preset.backbone.name == backbone and len(preset.encoder.in_channels) == levels:
            return size
    raise CheckpointError(
        f"HGNetV2-{backbone} with {levels} feature levels is not an official D-FINE size"
    )


def _hw(value: Any, field: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise CheckpointError(f"config.json: {field}={value!r} is not a size (height, width)")


def _num_points(value: Any, levels: int) -> tuple[int, ...]:
    points = tuple(value) if isinstance(value, (list, tuple)) else (int(value),) * levels
    if len(points) != levels:
        raise CheckpointError(
            f"config.json: decoder_n_points {list(points)} has {len(points)} entries for "
            f"num_feature_levels={levels}"
        )
    return points


def hf_num_labels(config_dict: Mapping[str, Any]) -> int:
    """Number of classes of a ``DFineConfig`` dict (``id2label``, else ``num_labels``)."""
    id2label = config_dict.get("id2label")
    n = len(id2label) if id2label else config_dict.get("num_labels", 2)
    if config_dict.get("num_labels") not in (None, n):
        raise CheckpointError(
            f"config.json: num_labels={config_dict['num_labels']} but id2label has {n} entries"
        )
    return int(n)


def hf_class_names(config_dict: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Class names from ``id2label`` (ids 0..C-1); None when they are transformers'
    placeholders ``LABEL_i``."""
    id2label = config_dict.get("id2label") or {}
    try:
        table = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: id2label keys must be integers ({e})") from e
    if not table:
        return None
    if sorted(table) != list(range(len(table))):
        raise CheckpointError("config.json: id2label ids must be 0..num_labels-1 without gaps")
    names = tuple(table[i] for i in range(len(table)))
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def _validate(config_dict: Mapping[str, Any], bb: Mapping[str, Any]) -> None:
    problems = _check_fixed(config_dict, FIXED_FIELDS, "")
    problems += _check_fixed(bb, FIXED_BACKBONE_FIELDS, "backbone_config.")
    if config_dict.get("use_timm_backbone") or config_dict.get("backbone"):
        problems.append("a timm/named backbone (only the HGNetV2 backbone_config is supported)")
    if bb.get("model_type", "hgnet_v2") != "hgnet_v2":
        problems.append(f"backbone_config.model_type={bb.get('model_type')!r} (need hgnet_v2)")
    layers = _get(config_dict, "decoder_layers", DFINE_DEFAULTS)
    eval_idx = _get(config_dict, "eval_idx", DFINE_DEFAULTS)
    if eval_idx not in (-1, layers - 1):
        problems.append(f"eval_idx={eval_idx} (only the last decoder layer, -1, is supported)")
    levels = _get(config_dict, "num_feature_levels", DFINE_DEFAULTS)
    if len(_get(config_dict, "decoder_in_channels", DFINE_DEFAULTS)) != levels:
        problems.append("num_feature_levels != len(decoder_in_channels) (extra levels)")
    if problems:
        raise CheckpointError(
            "config.json describes a D-FINE variant this project cannot represent: "
            + "; ".join(problems)
        )


def hf_config_to_model_config(config_dict: Mapping[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` of a transformers ``DFineConfig`` (as a ``config.json`` dict).

    The backbone variant comes from the HGNetV2 stem/stage channels, the size name from the
    variant and the number of levels; ``eval_size`` from ``anchor_image_size``/``eval_size``
    (640x640 when neither is set). Raises :class:`CheckpointError` naming every field with a
    value this project cannot represent.
    """
    if not isinstance(config_dict, Mapping):
        raise CheckpointError("config.json must hold a JSON object")
    model_type = config_dict.get("model_type")
    if model_type != "d_fine":
        raise CheckpointError(f"config.json is for model_type={model_type!r}, not 'd_fine'")
    bb = config_dict.get("backbone_config") or {}
    if not isinstance(bb, Mapping):
        raise CheckpointError("config.json: backbone_config must be a JSON object")
    _validate(config_dict, bb)

    def get(key: str) -> Any:
        return _get(config_dict, key, DFINE_DEFAULTS)

    name = _backbone_name(bb)
    return_idx = _return_idx(bb)
    levels = len(get("encoder_in_channels"))
    size = _size_for(name, levels)
    preset = PRESETS[size]
    backbone = BackboneConfig(
        name=name,
        use_lab=bool(_get(bb, "use_learnable_affine_block", HGNETV2_DEFAULTS)),
        return_idx=return_idx,
        freeze_norm=preset.backbone.freeze_norm,
        freeze_stem=preset.backbone.freeze_stem,
    )
    _check_channels(backbone, get("encoder_in_channels"), get("feat_strides"))
    encoder = EncoderConfig(
        in_channels=tuple(get("encoder_in_channels")),
        feat_strides=tuple(get("feat_strides")),
        hidden_dim=int(get("encoder_hidden_dim")),
        nhead=int(get("encoder_attention_heads")),
        dim_feedforward=int(get("encoder_ffn_dim")),
        dropout=float(get("dropout")),
        enc_act=str(get("encoder_activation_function")),
        use_encoder_idx=tuple(get("encode_proj_layers")),
        num_encoder_layers=int(get("encoder_layers")),
        pe_temperature=float(get("positional_encoding_temperature")),
        expansion=float(get("hidden_expansion")),
        depth_mult=float(get("depth_mult")),
        act=str(get("activation_function")),
    )
    decoder = _decoder_config(config_dict, get)
    eval_size = _hw(get("anchor_image_size"), "anchor_image_size") or _hw(
        get("eval_size"), "eval_size"
    )
    return ModelConfig(size, backbone, encoder, decoder, eval_size or DEFAULT_INPUT_SIZE)


def _check_channels(backbone: BackboneConfig, in_channels: Iterable, strides: Iterable) -> None:
    if tuple(in_channels) != backbone.out_channels:
        raise CheckpointError(
            f"config.json: encoder_in_channels={list(in_channels)} but the HGNetV2-"
            f"{backbone.name} stages {list(backbone.return_idx)} give {list(backbone.out_channels)}"
        )
    if tuple(strides) != backbone.out_strides:
        raise CheckpointError(
            f"config.json: feat_strides={list(strides)} but the backbone's are "
            f"{list(backbone.out_strides)}"
        )


def _decoder_config(config_dict: Mapping[str, Any], get: Callable[[str], Any]) -> DecoderConfig:
    levels = int(get("num_feature_levels"))
    reg_scale = float(get("reg_scale"))
    if reg_scale != round(reg_scale):
        raise CheckpointError(
            f"config.json: reg_scale={reg_scale} is not an integer (the reference stores int64)"
        )
    return DecoderConfig(
        num_classes=hf_num_labels(config_dict),
        hidden_dim=int(get("d_model")),
        num_queries=int(get("num_queries")),
        feat_channels=tuple(get("decoder_in_channels")),
        feat_strides=tuple(get("feat_strides")),
        num_levels=levels,
        num_points=_num_points(get("decoder_n_points"), levels),
        nhead=int(get("decoder_attention_heads")),
        num_layers=int(get("decoder_layers")),
        dim_feedforward=int(get("decoder_ffn_dim")),
        dropout=float(get("dropout")),
        activation=str(get("decoder_activation_function")),
        num_denoising=int(get("num_denoising")),
        label_noise_ratio=float(get("label_noise_ratio")),
        box_noise_scale=float(get("box_noise_scale")),
        eval_idx=-1,
        reg_max=int(get("max_num_bins")),
        reg_scale=round(reg_scale),
        up=float(get("up")),
    )


def model_config_to_hf_config(
    cfg: ModelConfig, class_names: Iterable[str] | None = None
) -> dict[str, Any]:
    """A ``config.json`` dict for ``DFineForObjectDetection`` equal to ``cfg`` in architecture.

    ``eval_size`` and ``anchor_image_size`` stay unset, so transformers computes anchors and the
    position embedding for every input, as this project does.
    """
    arch = HGNETV2_ARCHS[cfg.backbone.name]
    columns = list(zip(*arch["stages"]))
    backbone = {
        "model_type": "hgnet_v2",
        "stem_channels": list(arch["stem"]),
        "stage_in_channels": list(columns[0]),
        "stage_mid_channels": list(columns[1]),
        "stage_out_channels": list(columns[2]),
        "stage_num_blocks": list(columns[3]),
        "stage_downsample": list(columns[4]),
        "stage_light_block": list(columns[5]),
        "stage_kernel_size": list(columns[6]),
        "stage_numb_of_layers": list(columns[7]),
        "hidden_sizes": list(columns[2]),
        "use_learnable_affine_block": cfg.backbone.use_lab,
        "out_indices": [i + 1 for i in cfg.backbone.return_idx],
    }
    enc, dec = cfg.encoder, cfg.decoder
    names = list(class_names) if class_names else [f"LABEL_{i}" for i in range(dec.num_classes)]
    if len(names) != dec.num_classes:
        raise ValueError(f"{len(names)} class names for {dec.num_classes} classes")
    return {
        "model_type": "d_fine",
        "architectures": ["DFineForObjectDetection"],
        "backbone_config": backbone,
        "freeze_backbone_batch_norms": True,
        "encoder_hidden_dim": enc.hidden_dim,
        "encoder_in_channels": list(enc.in_channels),
        "feat_strides": list(enc.feat_strides),
        "encoder_layers": enc.num_encoder_layers,
        "encoder_ffn_dim": enc.dim_feedforward,
        "encoder_attention_heads": enc.nhead,
        "dropout": enc.dropout,
        "encode_proj_layers": list(enc.use_encoder_idx),
        "positional_encoding_temperature": int(enc.pe_temperature),
        "encoder_activation_function": enc.enc_act,
        "activation_function": enc.act,
        "hidden_expansion": enc.expansion,
        "depth_mult": enc.depth_mult,
        "d_model": dec.hidden_dim,
        "num_queries": dec.num_queries,
        "decoder_in_channels": list(dec.feat_channels),
        "decoder_ffn_dim": dec.dim_feedforward,
        "num_feature_levels": dec.num_levels,
        "decoder_n_points": list(dec.num_points),
        "decoder_layers": dec.num_layers,
        "decoder_attention_heads": dec.nhead,
        "decoder_activation_function": dec.activation,
        "num_denoising": dec.num_denoising,
        "label_noise_ratio": dec.label_noise_ratio,
        "box_noise_scale": dec.box_noise_scale,
        "eval_idx": -1,
        "max_num_bins": dec.reg_max,
        "reg_scale": float(dec.reg_scale),
        "up": float(dec.up),
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def config_differences(
    a: ModelConfig, b: ModelConfig, ignore: frozenset[str] = TRAINING_ONLY
) -> list[str]:
    """``part.field: a vs b`` for every field (eval_size and ``ignore`` excepted) that differs."""
    diffs = []
    for part in ("backbone", "encoder", "decoder"):
        pa, pb = getattr(a, part), getattr(b, part)
        for f in dataclasses.fields(pa):
            va, vb = getattr(pa, f.name), getattr(pb, f.name)
            if f.name in ignore or _same(va, vb):
                continue
            if f.name == "num_denoising" and va > 0 and vb > 0:
                continue  # a training hyper-parameter once the embedding exists
            diffs.append(f"{part}.{f.name}: {va!r} vs {vb!r}")
    return diffs


# ---------------------------------------------------------------------------- files
def _hf_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _safetensors_kind(path: Path) -> str | None:
    """'hf' / 'project' / None (unreadable) for a safetensors file, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
    except Exception:
        return None
    if METADATA_KEY in meta:
        return "project"
    return "hf" if any(k.startswith("model.backbone.") for k in keys) else None


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """True for a transformers D-FINE checkpoint: a directory holding ``config.json`` or
    transformers weight files, its ``config.json``, its weights (``model.safetensors``,
    ``pytorch_model.bin``, a shard index), or any ``.safetensors`` with ``model.backbone.*``
    weights and no project metadata."""
    p = Path(path)
    if p.is_dir():
        names = (CONFIG_NAME, *WEIGHT_NAMES, *INDEX_NAMES)
        return any((p / n).is_file() for n in names)
    if not p.is_file():
        return False
    if p.name in (CONFIG_NAME, *INDEX_NAMES):
        return True
    if p.name == TORCH_NAME:
        return (p.parent / CONFIG_NAME).is_file()
    if p.suffix == ".safetensors":
        return _safetensors_kind(p) == "hf"
    return False


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e}") from e
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects other than tensors, "
            "which could run code when loaded (only weights_only loading is allowed). Use the "
            "model.safetensors version of this checkpoint instead."
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch file (truncated?): {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    return _load_safetensors(path) if path.suffix == ".safetensors" else _load_torch(path)


def _load_index(path: Path) -> dict[str, torch.Tensor]:
    index = _read_json(path, "shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} has no weight_map")
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / str(shard)
        if not shard_path.is_file():
            raise CheckpointError(f"{path} names shard {shard}, which is missing")
        sd.update(_load_weight_file(shard_path))
    return sd


def _weights_path(path: Path) -> Path:
    if path.is_file() and path.name != CONFIG_NAME:
        return path
    folder = _hf_dir(path)
    for name in (SAFETENSORS_NAME, INDEX_NAMES[0], TORCH_NAME, INDEX_NAMES[1]):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder} has no weights: expected {SAFETENSORS_NAME} or {TORCH_NAME} "
        f"(or a shard index) beside {CONFIG_NAME}"
    )


def load_hf_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The raw transformers-layout state dict of a checkpoint directory or weight file."""
    weights = _weights_path(Path(path))
    if weights.name in INDEX_NAMES:
        sd = _load_index(weights)
    else:
        sd = _load_weight_file(weights)
    if not any(k.startswith("model.backbone.") for k in sd):
        raise CheckpointError(
            f"{weights} does not hold transformers D-FINE weights (no model.backbone.* keys)"
        )
    return sd


def _input_size(folder: Path, cfg: ModelConfig) -> tuple[int, int]:
    """Network input (H, W): the image processor's resize size, else the config's eval size."""
    pre = folder / PREPROCESSOR_NAME
    if pre.is_file():
        proc = _read_json(pre, "image processor config")
        if proc.get("do_normalize"):
            warnings.warn(
                f"{pre}: the image processor normalizes with mean/std; this project feeds "
                "images in [0, 1] like the reference",
                stacklevel=3,
            )
        size = proc.get("size") or {}
        if isinstance(size, dict) and size.get("height") and size.get("width"):
            return (int(size["height"]), int(size["width"]))
    return cfg.eval_size


def read_hf_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a transformers-layout D-FINE checkpoint into ``(state_dict, metadata)``.

    The state dict has the reference layout (see :func:`hf_to_reference_state_dict`); the
    metadata holds ``format``, ``size``, ``num_classes``, ``class_names`` (from ``id2label``;
    None for transformers' ``LABEL_i`` placeholders) and ``input_size``. The architecture the
    config describes must equal the official preset that :func:`dfine.checkpoint.infer_config`
    derives from the weights; otherwise a :class:`CheckpointError` names the differing fields.
    """
    path = Path(path)
    folder = _hf_dir(path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_NAME}; a transformers checkpoint needs it beside "
            f"{path.name if path.is_file() else 'the weights'}"
        )
    config_dict = _read_json(config_path, "model config")
    cfg = hf_config_to_model_config(config_dict)
    if config_dict.get("eval_size") is not None:
        warnings.warn(
            f"{config_path} sets eval_size: transformers then skips the AIFI position embedding "
            "in eval mode; this project, like the reference, always adds it",
            stacklevel=2,
        )
    cfg = dataclasses.replace(cfg, eval_size=_input_size(folder, cfg))
    sd = hf_to_reference_state_dict(load_hf_weights(path), cfg)
    inferred = infer_config(sd)
    diffs = config_differences(cfg, inferred)
    if diffs:
        raise CheckpointError(
            f"{config_path} describes a D-FINE-{cfg.size.upper()} variant that differs from the "
            f"official preset this project builds for these weights: " + "; ".join(diffs)
        )
    meta = {
        "format": "transformers",
        "size": cfg.size,
        "num_classes": cfg.num_classes,
        "class_names": list(names) if (names := hf_class_names(config_dict)) else None,
        "input_size": list(cfg.eval_size),
    }
    return sd, meta


def save_hf_checkpoint(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` (a :class:`dfine.DFINE`) as a transformers checkpoint directory
    (``config.json`` + ``model.safetensors``), loadable by ``DFineForObjectDetection``."""
    from safetensors.torch import save_file

    if getattr(model, "deployed", False):
        raise ValueError("a deployed (fused) model has no reference layout; save before deploy()")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = model_config_to_hf_config(model.config, model.class_names)
    sd = reference_to_hf_state_dict(model.state_dict())
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    save_file(tensors, str(folder / SAFETENSORS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder
