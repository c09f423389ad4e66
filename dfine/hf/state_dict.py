"""State-dict transforms between the layouts: q/k/v split and merge, decoder buffers
(anchors, valid mask) the transformers layout drops, tied heads."""

from __future__ import annotations

import re
import types
from collections.abc import Mapping

import torch

from dfine.config import (
    ModelConfig,
)
from dfine.hf.keys import _QKV, _TIED_HEADS, hf_key_to_reference, reference_key_to_hf
from dfine.nn.decoder import DFINEDecoder
from dfine.weights import ALIASES, CheckpointError


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
