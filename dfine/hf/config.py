"""``config.json`` (a transformers ``DFineConfig``) ↔ :class:`dfine.config.ModelConfig`:
the defaults transformers fills in, validation, and the differences from the official presets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dfine.config import (
    FAMILIES,
    HGNETV2_ARCHS,
    PRESETS,
    BackboneConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
)
from dfine.errors import InvalidArgumentError
from dfine.weights import CheckpointError

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


def _decoder_activation(act: Any) -> str:
    """The decoder activation of a ``config.json``: ``relu`` (D-FINE) or ``silu``, read as
    DEIM-D-FINE (SiLU in every decoder MLP too, as DEIM trains it; transformers itself applies
    ``decoder_activation_function`` to the FFNs only)."""
    if act not in FAMILIES.values():
        raise CheckpointError(
            f"config.json: decoder_activation_function={act!r}; only relu (D-FINE) and silu "
            "(DEIM-D-FINE) are supported"
        )
    return str(act)


def _decoder_config(config_dict: Mapping[str, Any], get: Callable[[str], Any]) -> DecoderConfig:
    levels = int(get("num_feature_levels"))
    act = _decoder_activation(get("decoder_activation_function"))
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
        activation=act,
        mlp_act=act,
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
        raise InvalidArgumentError(f"{len(names)} class names for {dec.num_classes} classes")
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
