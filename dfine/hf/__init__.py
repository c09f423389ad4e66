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

Modules: :mod:`~dfine.hf.keys` (key names), :mod:`~dfine.hf.state_dict` (tensor transforms),
:mod:`~dfine.hf.config` (``config.json`` ↔ ``ModelConfig``), :mod:`~dfine.hf.files` (folders,
reading, atomic saving).
"""

from __future__ import annotations

from dfine.hf.config import (
    DEFAULT_INPUT_SIZE,
    DFINE_DEFAULTS,
    FIXED_BACKBONE_FIELDS,
    FIXED_FIELDS,
    HGNETV2_DEFAULTS,
    TRAINING_ONLY,
    config_differences,
    hf_class_names,
    hf_config_to_model_config,
    hf_num_labels,
    model_config_to_hf_config,
)
from dfine.hf.files import (
    CONFIG_NAME,
    INDEX_NAMES,
    PREPROCESSOR_NAME,
    SAFETENSORS_NAME,
    TORCH_NAME,
    WEIGHT_NAMES,
    is_hf_checkpoint,
    load_hf_weights,
    read_hf_checkpoint,
    save_hf_checkpoint,
)
from dfine.hf.keys import (
    KEY_TABLE,
    hf_key_to_reference,
    hub_key,
    reference_key_to_hf,
)
from dfine.hf.state_dict import (
    hf_to_reference_state_dict,
    reference_anchors,
    reference_to_hf_state_dict,
)

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_INPUT_SIZE",
    "DFINE_DEFAULTS",
    "FIXED_BACKBONE_FIELDS",
    "FIXED_FIELDS",
    "HGNETV2_DEFAULTS",
    "INDEX_NAMES",
    "KEY_TABLE",
    "PREPROCESSOR_NAME",
    "SAFETENSORS_NAME",
    "TORCH_NAME",
    "TRAINING_ONLY",
    "WEIGHT_NAMES",
    "config_differences",
    "hf_class_names",
    "hf_config_to_model_config",
    "hf_key_to_reference",
    "hf_num_labels",
    "hf_to_reference_state_dict",
    "hub_key",
    "is_hf_checkpoint",
    "load_hf_weights",
    "model_config_to_hf_config",
    "read_hf_checkpoint",
    "reference_anchors",
    "reference_key_to_hf",
    "reference_to_hf_state_dict",
    "save_hf_checkpoint",
]
