"""State-dict key names: transformers hub/module names ↔ the reference layout."""

from __future__ import annotations

import re
from typing import Any

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
