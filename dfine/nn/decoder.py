"""The D-FINE decoder: query selection, decoder layers, heads, LQE and FDR.

Data flow (one image batch, Q queries, L layers, R = reg_max):

    memory [B, S, C] ─► enc_output ─► enc_score_head ─► top-Q by max class logit
        selected memory → content queries; enc_bbox_head + anchors → initial boxes b0
    layer 0: h0 = layer(content, b0);  pre_boxes = sigmoid(pre_bbox_head(h0) + logit(b0))
    layer l: h_l = layer(h_{l-1}, box_{l-1})
             corners_l = dec_bbox_head[l](h_l + h_{l-1}) + corners_{l-1}     [B, Q, 4(R+1)]
             box_l     = distance2bbox(pre_boxes, Σ_n softmax(corners_l)(n) W(n), reg_scale)
             logits_l  = dec_score_head[l](h_l) + LQE_l(corners_l)

The module names and parameter layout are those of the reference ``DFINETransformer``.

With ``DecoderConfig.ablation == "fdr"`` (the paper's ablation without FDR) the box head is
RT-DETR's instead: ``box_l = sigmoid(dec_bbox_head[l](h_l) + logit(box_{l-1}))`` with 4 deltas
per layer, no pre-head, no distributions and no LQE.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dfine.config import DecoderConfig
from dfine.errors import InvalidArgumentError
from dfine.nn.attention import MSDeformableAttention
from dfine.nn.common import MLP, bias_init_with_prob, get_activation, inverse_sigmoid
from dfine.nn.denoising import contrastive_denoising_group
from dfine.nn.fdr import distance2bbox, integral, weighting_function


class QuerySelection(NamedTuple):
    """What encoder-side query selection hands to the decoder layers (B images, Q queries).

    ``content [B, Q, C]`` and ``boxes_unact [B, Q, 4]`` (inverse-sigmoid cxcywh) are detached;
    ``logits [B, Q, classes]`` and ``boxes_unact_grad [B, Q, 4]`` keep their gradient for the
    encoder auxiliary loss; ``indices [B, Q]`` are the selected encoder positions, chosen by
    ``scores [B, S]``, the best class logit of every memory position.
    """

    content: torch.Tensor
    boxes_unact: torch.Tensor
    boxes_unact_grad: torch.Tensor
    logits: torch.Tensor
    indices: torch.Tensor
    scores: torch.Tensor


class LayerOutputs(NamedTuple):
    """What :meth:`DFINEDecoder.run_layers` returns: lists over the kept layers of ``boxes
    [B, Q, 4]`` (cxcywh, normalized), ``logits [B, Q, C]`` (after LQE), ``logits_raw`` (before
    LQE) and ``corners [B, Q, 4(R+1)]``; plus layer 0's ``pre_boxes [B, Q, 4]``, ``pre_logits
    [B, Q, C]`` and ``ref_initial`` (the detached ``pre_boxes`` every layer refines). Without
    FDR (ablation ``fdr``): ``corners`` empty, the last three None."""

    boxes: list[torch.Tensor]
    logits: list[torch.Tensor]
    logits_raw: list[torch.Tensor]
    corners: list[torch.Tensor]
    pre_boxes: torch.Tensor | None  # None without FDR (ablation ``fdr``)
    pre_logits: torch.Tensor | None
    ref_initial: torch.Tensor | None


class AttentionRecord(NamedTuple):
    """What one decoder layer's attention did (kept only while tracing; B images, Q queries):
    ``sampling_locations [B, Q, heads, P, 2]`` (x, y) in [0, 1] of the network input,
    ``attention_weights [B, Q, heads, P]`` (softmax over the P points, grouped by level) and
    ``self_attention [B, Q, Q]`` (query-to-query weights, mean over heads; rows sum to 1)."""

    sampling_locations: torch.Tensor
    attention_weights: torch.Tensor
    self_attention: torch.Tensor


class Gate(nn.Module):
    """Gated fusion of the self-attention stream and the cross-attention result."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        nn.init.constant_(self.gate.bias, bias_init_with_prob(0.5))
        nn.init.constant_(self.gate.weight, 0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.gate(torch.cat([x1, x2], dim=-1)))
        g1, g2 = gates.chunk(2, dim=-1)
        return self.norm(g1 * x1 + g2 * x2)


class TransformerDecoderLayer(nn.Module):
    """Self-attention → deformable cross-attention (gated) → FFN, post-norm."""

    exact_attention: bool = True  # see HybridEncoder's TransformerEncoderLayer

    def __init__(
        self,
        d_model: int,
        n_head: int,
        dim_feedforward: int,
        dropout: float,
        activation: str,
        n_levels: int,
        n_points: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.gateway = Gate(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = get_activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(
        self,
        target: torch.Tensor,
        reference_boxes: torch.Tensor,
        values: list[torch.Tensor],
        spatial_shapes: list[tuple[int, int]],
        attn_mask: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        record: list[AttentionRecord] | None = None,
    ) -> torch.Tensor:
        """``target [B, Q, C]``, ``reference_boxes [B, Q, 1, 4]`` → ``[B, Q, C]``. With a
        ``record`` list, appends this layer's :class:`AttentionRecord` to it (tracing)."""
        q = k = target if query_pos is None else target + query_pos
        attn, self_weights = self.self_attn(
            q, k, value=target, attn_mask=attn_mask, need_weights=self.exact_attention
        )
        if record is not None and self_weights is None:
            # a deployed layer's fused attention returns no weights: the trace computes them
            # aside, so its values stay exactly the plain forward's
            _, self_weights = self.self_attn(
                q, k, value=target, attn_mask=attn_mask, need_weights=True
            )
        target = self.norm1(target + self.dropout1(attn))
        query = target if query_pos is None else target + query_pos
        cross, locations, weights = self.cross_attn.attend(
            query, reference_boxes, values, spatial_shapes
        )
        if record is not None:
            record.append(AttentionRecord(locations, weights, self_weights))
        target = self.gateway(target, self.dropout2(cross))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(target))))
        target = target + self.dropout4(ffn)
        return self.norm3(target.clamp(min=-65504, max=65504))


class LQE(nn.Module):
    """Localization Quality Estimator: adds a score from the top-k bin probabilities (and their
    mean) of the four edge distributions to the class logits."""

    def __init__(
        self, k: int, hidden_dim: int, num_layers: int, reg_max: int, act: str = "relu"
    ) -> None:
        super().__init__()
        self.k = k
        self.reg_max = reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, num_layers, act=act)
        nn.init.constant_(self.reg_conf.layers[-1].bias, 0)
        nn.init.constant_(self.reg_conf.layers[-1].weight, 0)

    def quality(self, pred_corners: torch.Tensor) -> torch.Tensor:
        """``[B, Q, 4(R+1)]`` → quality logit ``[B, Q, 1]``."""
        b, q, _ = pred_corners.shape
        prob = F.softmax(pred_corners.reshape(b, q, 4, self.reg_max + 1), dim=-1)
        top, _ = prob.topk(self.k, dim=-1)
        stat = torch.cat([top, top.mean(dim=-1, keepdim=True)], dim=-1)
        return self.reg_conf(stat.reshape(b, q, -1))

    def forward(self, scores: torch.Tensor, pred_corners: torch.Tensor) -> torch.Tensor:
        return scores + self.quality(pred_corners)


class TransformerDecoder(nn.Module):
    """The stack of decoder layers and their LQEs. Registered under ``decoder.decoder`` with
    aliases of ``up`` / ``reg_scale``, exactly as the reference state dict has them."""

    def __init__(
        self,
        layer_factory,
        num_layers: int,
        reg_max: int,
        up: nn.Parameter | None,
        reg_scale: nn.Parameter | None,
        lqe: bool = True,
        lqe_act: str = "relu",
    ) -> None:
        super().__init__()
        self.up = up
        self.reg_scale = reg_scale
        self.reg_max = reg_max
        # like the reference, every layer (and every LQE) starts as a copy of one instance
        layer = layer_factory()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        if lqe:  # LQE reads distribution statistics: absent without FDR (ablation "fdr")
            one = LQE(4, 64, 2, reg_max, act=lqe_act)
            self.lqe_layers = nn.ModuleList(copy.deepcopy(one) for _ in range(num_layers))


@dataclass
class DecoderTrace:
    """Everything the decoder computed for a batch, for every layer (eval mode).

    Shapes: B images, Q queries, L decoder layers, C classes, R = reg_max.

    A model trained with ``ablation="fdr"`` has no distributions, pre-head or LQE: its
    ``pre_boxes``, ``pre_logits``, ``corners``, ``project``, ``reg_scale`` and ``up`` are None
    and ``logits`` equals ``logits_raw`` (check :attr:`has_distributions`).

    Attributes:
        enc_topk_indices: ``[B, Q]`` int64, selected positions in the flattened multi-level
            memory (levels in stride order, row-major within a level).
        enc_topk_logits: ``[B, Q, C]`` encoder class logits at the selected positions.
        init_boxes: ``[B, Q, 4]`` initial boxes b0 (cx, cy, w, h, normalized) from the encoder.
        pre_boxes: ``[B, Q, 4]`` boxes of the first-layer traditional head; the fixed reference
            from which every layer's FDR edge offsets are measured.
        pre_logits: ``[B, Q, C]`` class logits of layer 0 without LQE.
        boxes: ``[L, B, Q, 4]`` box of every layer (cx, cy, w, h, normalized).
        logits: ``[L, B, Q, C]`` class logits of every layer, LQE included.
        logits_raw: ``[L, B, Q, C]`` the same without the LQE term.
        corners: ``[L, B, Q, 4, R+1]`` accumulated per-edge bin logits (edges: left, top,
            right, bottom).
        project: ``[R+1]`` the weighting function W(n).
        reg_scale: the model's reg_scale; an edge offset d maps to ``d * w / reg_scale``.
        up: the model's ``up``.
        spatial_shapes: (H, W) of every memory level.
        input_size: (H, W) of the network input.
        ablation: the model's ablation switch (``none``, ``golsd`` or ``fdr``).
        num_points: deformable-attention sampling points per memory level (N: (6, 6), S–X:
            (3, 6, 3)); P = their sum.
        sampling_locations: ``[L, B, Q, heads, P, 2]`` where every decoder layer's
            cross-attention sampled, (x, y) in the coordinates of ``boxes`` (normalized to the
            network input, [0, 1] inside it; points may fall outside). The P points are grouped
            by level as ``num_points`` says (:attr:`point_levels`).
        attention_weights: ``[L, B, Q, heads, P]`` the weight of every sampled point (softmax
            over the P points of a head: each head's weights sum to 1).
        self_attention: ``[L, B, Q, Q]`` decoder self-attention of every layer, averaged over
            heads: row q is how much query q attended to each query (rows sum to 1).
        enc_objectness: ``[B, S]`` the encoder's objectness of every memory position (its best
            class probability, sigmoid of the logit query selection ranks by), flattened like
            ``enc_topk_indices`` index it (S = Σ H_l W_l); :meth:`objectness_maps` reshapes it
            to one ``[B, H_l, W_l]`` map per level.
        input_extent: the network input's ``(x0, y0, x1, y1)`` in the coordinates of ``boxes``
            and ``sampling_locations``: ``(0, 0, 1, 1)``, unless a letterboxed trace was mapped
            to the original image (``Detector.trace``); the memory grids (``enc_objectness``,
            ``spatial_shapes``) cover this rectangle.

    ``sampling_locations``, ``attention_weights``, ``self_attention`` and ``enc_objectness``
    are filled by ``model.trace(images)`` (eval mode) and None with ``attention=False``; the
    plain forward and training never keep them. A model with ``ablation="fdr"`` has them too.
    """

    enc_topk_indices: torch.Tensor
    enc_topk_logits: torch.Tensor
    init_boxes: torch.Tensor
    pre_boxes: torch.Tensor | None
    pre_logits: torch.Tensor | None
    boxes: torch.Tensor
    logits: torch.Tensor
    logits_raw: torch.Tensor
    corners: torch.Tensor | None
    project: torch.Tensor | None
    reg_scale: float | None
    up: float | None
    spatial_shapes: list[tuple[int, int]]
    input_size: tuple[int, int]
    ablation: str = "none"
    num_points: tuple[int, ...] = ()
    sampling_locations: torch.Tensor | None = None
    attention_weights: torch.Tensor | None = None
    self_attention: torch.Tensor | None = None
    enc_objectness: torch.Tensor | None = None
    input_extent: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    @property
    def num_layers(self) -> int:
        return self.boxes.shape[0]

    @property
    def has_attention(self) -> bool:
        """False for a trace taken with ``attention=False``."""
        return self.sampling_locations is not None

    @property
    def point_levels(self) -> torch.Tensor:
        """``[P]`` int64: the memory level of every sampling point (0 = the finest)."""
        counts = torch.tensor(self.num_points, dtype=torch.int64)
        return torch.repeat_interleave(torch.arange(len(self.num_points)), counts)

    @property
    def level_strides(self) -> list[int]:
        """The stride (input pixels per memory cell) of every level, e.g. [16, 32] for N."""
        return [round(self.input_size[0] / h) for h, _ in self.spatial_shapes]

    def objectness_maps(self) -> list[torch.Tensor]:
        """``enc_objectness`` as one ``[B, H_l, W_l]`` map per level."""
        if self.enc_objectness is None:
            raise ValueError("this trace was taken with attention=False: it has no objectness")
        sizes = [h * w for h, w in self.spatial_shapes]
        parts = self.enc_objectness.split(sizes, dim=-1)
        return [p.reshape(p.shape[0], h, w) for p, (h, w) in zip(parts, self.spatial_shapes)]

    @property
    def has_distributions(self) -> bool:
        """False for a model trained with ``ablation="fdr"`` (RT-DETR-style box deltas)."""
        return self.corners is not None

    def require_distributions(self, what: str = "this view") -> None:
        """Raise :class:`NoDistributionsError` (one line, what to do) unless the model has
        per-edge distributions."""
        if not self.has_distributions:
            raise NoDistributionsError.about(what)

    @property
    def reg_max(self) -> int:
        self.require_distributions("reg_max")
        return self.project.shape[0] - 1

    @property
    def probs(self) -> torch.Tensor:
        """``[L, B, Q, 4, R+1]`` per-edge bin probabilities (softmax of ``corners``)."""
        self.require_distributions("edge probabilities")
        return self.corners.softmax(-1)

    @property
    def edge_offsets(self) -> torch.Tensor:
        """``[L, B, Q, 4]`` expected offsets ``Σ_n p(n) W(n)`` (in reg_scale units)."""
        return self.probs @ self.project

    def select(self, image: int) -> DecoderTrace:
        """The trace of one image (batch dimension kept, size 1)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and f.name != "project":
                batch_dim = 1 if f.name in _PER_LAYER else 0
                v = v.narrow(batch_dim, image, 1)
            out[f.name] = v
        return DecoderTrace(**out)


_PER_LAYER = (
    "boxes",
    "logits",
    "logits_raw",
    "corners",
    "sampling_locations",
    "attention_weights",
    "self_attention",
)  # DecoderTrace fields shaped [L, B, ...]


class NoDistributionsError(InvalidArgumentError):
    """Asked for per-edge distributions of a model trained with ``ablation="fdr"``."""

    @classmethod
    def about(cls, what: str) -> NoDistributionsError:
        """The one-line explanation: ``what`` needs distributions, this model has none."""
        return cls(
            f"{what} needs per-edge distributions, but this model was trained with "
            "--ablate fdr (RT-DETR-style box deltas, no FDR): it has none; load a full "
            "D-FINE or an --ablate golsd model"
        )


class DFINEDecoder(nn.Module):
    """Query selection + decoder + heads (the reference's ``DFINETransformer``).

    ``forward(feats, targets=None)`` takes the encoder maps ``[B, C_i, H_i, W_i]``.
    Eval mode returns ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}`` of the last layer;
    train mode adds everything the criterion needs (auxiliary layers, pre-head, encoder top-k,
    denoising groups), in the reference's dictionary layout.
    """

    def __init__(self, cfg: DecoderConfig, eval_size: tuple[int, int] | None = (640, 640)) -> None:
        super().__init__()
        if len(cfg.feat_channels) > cfg.num_levels:
            raise ValueError("more feature maps than decoder levels")
        if len(cfg.feat_strides) != len(cfg.feat_channels):
            raise ValueError("feat_strides and feat_channels differ in length")
        if cfg.eval_idx not in (-1, cfg.num_layers - 1):
            raise ValueError("only eval_idx = -1 (the last layer) is supported")
        self.cfg = cfg
        strides = list(cfg.feat_strides)
        while len(strides) < cfg.num_levels:
            strides.append(strides[-1] * 2)
        self.feat_strides = strides
        self.num_classes = cfg.num_classes
        self.num_queries = cfg.num_queries
        self.reg_max = cfg.reg_max
        self.num_layers = cfg.num_layers
        self.num_denoising = cfg.num_denoising
        # inference budget (eval mode only, see DFINE.set_decoder_budget): the first
        # ``eval_layers`` layers run (the reference's eval_idx) on the top ``eval_queries``
        self.eval_layers = cfg.num_layers
        self.eval_queries = cfg.num_queries
        hidden = cfg.hidden_dim

        self.ablation = cfg.ablation
        self.distributions = cfg.distributions
        self._build_input_proj(cfg.feat_channels, hidden, cfg.num_levels)
        if self.distributions:
            self.up = nn.Parameter(torch.tensor([cfg.up]), requires_grad=False)
            self.reg_scale = nn.Parameter(torch.tensor([cfg.reg_scale]), requires_grad=False)
        else:  # RT-DETR-style box deltas: no W(n)
            self.up = self.reg_scale = None

        def layer_factory() -> TransformerDecoderLayer:
            return TransformerDecoderLayer(
                hidden,
                cfg.nhead,
                cfg.dim_feedforward,
                cfg.dropout,
                cfg.activation,
                cfg.num_levels,
                tuple(cfg.num_points),
            )

        self.decoder = TransformerDecoder(
            layer_factory,
            cfg.num_layers,
            cfg.reg_max,
            self.up,
            self.reg_scale,
            lqe=self.distributions,
            lqe_act=cfg.mlp_act,
        )
        if cfg.num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(
                cfg.num_classes + 1, hidden, padding_idx=cfg.num_classes
            )
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        act = cfg.mlp_act  # ReLU in D-FINE, SiLU in DEIM
        self.query_pos_head = MLP(4, 2 * hidden, hidden, 2, act=act)
        self.enc_output = nn.Sequential(
            OrderedDict([("proj", nn.Linear(hidden, hidden)), ("norm", nn.LayerNorm(hidden))])
        )
        self.enc_score_head = nn.Linear(hidden, cfg.num_classes)
        self.enc_bbox_head = MLP(hidden, hidden, 4, 3, act=act)
        self.dec_score_head = nn.ModuleList(
            nn.Linear(hidden, cfg.num_classes) for _ in range(cfg.num_layers)
        )
        box_out = 4 * (cfg.reg_max + 1) if self.distributions else 4
        if self.distributions:
            self.pre_bbox_head = MLP(hidden, hidden, 4, 3, act=act)
        self.dec_bbox_head = nn.ModuleList(
            MLP(hidden, hidden, box_out, 3, act=act) for _ in range(cfg.num_layers)
        )

        # The reference stores anchors for its eval size as buffers; they are kept for the
        # state-dict layout, but anchors are computed for whatever input size is used.
        shapes = [(int(eval_size[0] / s), int(eval_size[1] / s)) for s in strides]
        anchors, valid_mask = self.generate_anchors(shapes)
        self.register_buffer("anchors", anchors)
        self.register_buffer("valid_mask", valid_mask)
        self._anchor_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._project_cache: dict[tuple, torch.Tensor] = {}
        self._reset_parameters(cfg.feat_channels)

    # ------------------------------------------------------------------ construction
    def _build_input_proj(self, feat_channels: tuple[int, ...], hidden: int, levels: int) -> None:
        def proj(c_in: int, k: int = 1, s: int = 1, p: int = 0) -> nn.Module:
            if c_in == hidden:
                return nn.Identity()
            return nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(c_in, hidden, k, s, padding=p, bias=False)),
                        ("norm", nn.BatchNorm2d(hidden)),
                    ]
                )
            )

        self.input_proj = nn.ModuleList(proj(c) for c in feat_channels)
        c_in = feat_channels[-1]
        for _ in range(levels - len(feat_channels)):
            self.input_proj.append(proj(c_in, 3, 2, 1))
            c_in = hidden

    def _reset_parameters(self, feat_channels: tuple[int, ...]) -> None:
        bias = bias_init_with_prob(0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        pre = (self.pre_bbox_head,) if self.distributions else ()
        for head in (self.enc_bbox_head, *pre, *self.dec_bbox_head):
            nn.init.constant_(head.layers[-1].weight, 0)
            nn.init.constant_(head.layers[-1].bias, 0)
        for cls in self.dec_score_head:
            nn.init.constant_(cls.bias, bias)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for m, c in zip(self.input_proj, feat_channels):
            if c != self.cfg.hidden_dim:
                nn.init.xavier_uniform_(m[0].weight)

    # ------------------------------------------------------------------ cached constants
    def generate_anchors(
        self,
        spatial_shapes: list[tuple[int, int]],
        grid_size: float = 0.05,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor boxes in logit space ``[1, S, 4]`` (``inf`` where invalid) and the valid mask
        ``[1, S, 1]`` for maps of the given (H, W); an anchor is valid when all four of its
        coordinates lie in (eps, 1 - eps)."""
        per_level = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            xy = torch.stack([gx, gy], dim=-1)
            xy = (xy.unsqueeze(0) + 0.5) / torch.tensor([w, h], dtype=torch.float32)
            wh = torch.ones_like(xy) * grid_size * (2.0**lvl)
            per_level.append(torch.concat([xy, wh], dim=-1).reshape(-1, h * w, 4))
        anchors = torch.concat(per_level, dim=1).to(device)
        eps = self.cfg.eps
        valid = ((anchors > eps) * (anchors < 1 - eps)).all(-1, keepdim=True)
        anchors = torch.log(anchors / (1 - anchors))
        anchors = torch.where(valid, anchors, torch.inf)
        return anchors, valid

    def anchors_for(
        self, spatial_shapes: list[tuple[int, int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # inference tensors made under inference_mode cannot enter an autograd graph later
        key = (tuple(spatial_shapes), str(device), torch.is_inference_mode_enabled())
        hit = self._anchor_cache.get(key)
        if hit is None:
            hit = self.generate_anchors(spatial_shapes, device=device)
            self._anchor_cache[key] = hit
        return hit

    def project(self) -> torch.Tensor:
        """W(n) ``[reg_max + 1]``; cached in eval mode (recomputed while training). The cache
        is cleared when weights are loaded or the module moves."""
        if not self.distributions:
            raise NoDistributionsError.about("W(n)")
        if self.training:
            return weighting_function(self.reg_max, self.up, self.reg_scale)
        key = torch.is_inference_mode_enabled()  # see anchors_for
        w = self._project_cache.get(key)
        if w is None:
            w = weighting_function(self.reg_max, self.up, self.reg_scale)
            self._project_cache[key] = w
        return w

    def clear_caches(self) -> None:
        self._anchor_cache = {}
        self._project_cache = {}

    def _apply(self, fn, recurse=True):
        self.clear_caches()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_caches()
        return super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ forward pieces
    def _flatten_memory(
        self, feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        for i in range(len(feats), self.cfg.num_levels):
            src = feats[-1] if i == len(feats) else proj[-1]
            proj.append(self.input_proj[i](src))
        shapes = [(f.shape[2], f.shape[3]) for f in proj]
        memory = torch.concat([f.flatten(2).permute(0, 2, 1) for f in proj], 1)
        return memory, shapes

    def _value_maps(
        self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> list[torch.Tensor]:
        b, s, _ = memory.shape
        value = memory.reshape(b, s, self.cfg.nhead, -1).permute(0, 2, 3, 1)
        return list(value.split([h * w for h, w in spatial_shapes], dim=-1))

    def select_queries(
        self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> QuerySelection:
        """Encoder-side query selection: top-Q positions by their best class logit (see
        :class:`QuerySelection` for the fields and shapes); Q is ``eval_queries`` in eval mode."""
        num_queries = self.num_queries if self.training else self.eval_queries
        if memory.shape[1] < num_queries:
            raise InvalidArgumentError(
                f"the input is too small: its feature maps {spatial_shapes} have {memory.shape[1]} "
                f"positions for {num_queries} queries; use a larger input size"
            )
        anchors, valid = self.anchors_for(spatial_shapes, memory.device)
        memory = valid.to(memory.dtype) * memory
        out_memory = self.enc_output(memory)
        logits = self.enc_score_head(out_memory)
        scores = logits.max(-1).values
        _, idx = torch.topk(scores, num_queries, dim=-1)
        top_memory = out_memory.gather(1, idx.unsqueeze(-1).expand(-1, -1, out_memory.shape[-1]))
        top_anchors = anchors.expand(memory.shape[0], -1, -1).gather(
            1, idx.unsqueeze(-1).expand(-1, -1, 4)
        )
        top_logits = logits.gather(1, idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        boxes_unact = self.enc_bbox_head(top_memory) + top_anchors
        return QuerySelection(
            content=top_memory.detach(),
            boxes_unact=boxes_unact.detach(),
            boxes_unact_grad=boxes_unact,
            logits=top_logits,
            indices=idx,
            scores=scores,
        )

    def _active_layers(self) -> nn.ModuleList | list[nn.Module]:
        """Every layer in training; the first ``eval_layers`` in eval mode."""
        layers = self.decoder.layers
        return layers if self.training else layers[: self.eval_layers]

    def run_layers(
        self,
        target: torch.Tensor,
        ref_unact: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        attn_mask: torch.Tensor | None = None,
        all_layers: bool = False,
        record: list[AttentionRecord] | None = None,
    ) -> LayerOutputs:
        """Run the decoder layers with FDR on ``target [B, Q, C]`` content queries with initial
        boxes ``ref_unact [B, Q, 4]`` (inverse sigmoid).

        ``all_layers`` computes class logits (and keeps boxes/corners) for every layer, as in
        training or tracing; otherwise only the last layer's heads run (see
        :class:`LayerOutputs`). Without FDR (ablation ``fdr``) see :meth:`run_layers_direct`.
        A ``record`` list receives every layer's :class:`AttentionRecord` (tracing only).
        """
        if not self.distributions:
            return self.run_layers_direct(
                target, ref_unact, memory, spatial_shapes, attn_mask, all_layers, record
            )
        values = self._value_maps(memory, spatial_shapes)
        project = self.project()
        reg_scale = self.reg_scale
        layers = self._active_layers()
        last = len(layers) - 1
        output = target
        output_detach: torch.Tensor | int = 0
        corners_prev: torch.Tensor | int = 0
        ref_detach = F.sigmoid(ref_unact)
        kept: dict[str, list] = {"boxes": [], "logits": [], "logits_raw": [], "corners": []}
        pre_boxes = pre_logits = ref_initial = None
        for i, layer in enumerate(layers):
            query_pos = self.query_pos_head(ref_detach).clamp(min=-10, max=10)
            output = layer(
                output,
                ref_detach.unsqueeze(2),
                values,
                spatial_shapes,
                attn_mask,
                query_pos,
                record,
            )
            if i == 0:
                pre_boxes = F.sigmoid(self.pre_bbox_head(output) + inverse_sigmoid(ref_detach))
                pre_logits = self.dec_score_head[0](output)
                ref_initial = pre_boxes.detach()
            corners = self.dec_bbox_head[i](output + output_detach) + corners_prev
            box = distance2bbox(ref_initial, integral(corners, project), reg_scale)
            if all_layers or i == last:
                raw = self.dec_score_head[i](output)
                kept["logits_raw"].append(raw)
                kept["logits"].append(self.decoder.lqe_layers[i](raw, corners))
                kept["boxes"].append(box)
                kept["corners"].append(corners)
            corners_prev = corners
            ref_detach = box.detach()
            output_detach = output.detach()
        return LayerOutputs(
            **kept, pre_boxes=pre_boxes, pre_logits=pre_logits, ref_initial=ref_initial
        )

    def run_layers_direct(
        self,
        target: torch.Tensor,
        ref_unact: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        attn_mask: torch.Tensor | None = None,
        all_layers: bool = False,
        record: list[AttentionRecord] | None = None,
    ) -> LayerOutputs:
        """The decoder layers with RT-DETR's box refinement (ablation ``fdr``).

        ``box_l = sigmoid(dec_bbox_head[l](h_l) + logit(box_{l-1}))``, 4 deltas per layer; the
        next layer's reference is ``box_l`` detached. In training, layers after the first
        compute their kept box from the previous layer's box *with* its gradient (RT-DETR's
        and DINO's "look forward twice"); the values are identical to eval mode.
        Returns :class:`LayerOutputs` with ``logits`` = ``logits_raw`` (no LQE), an empty
        ``corners`` and ``pre_boxes``, ``pre_logits``, ``ref_initial`` None.
        """
        values = self._value_maps(memory, spatial_shapes)
        layers = self._active_layers()
        last = len(layers) - 1
        output = target
        ref_detach = F.sigmoid(ref_unact)
        ref_grad: torch.Tensor | None = None
        kept: dict[str, list] = {"boxes": [], "logits": [], "logits_raw": [], "corners": []}
        for i, layer in enumerate(layers):
            query_pos = self.query_pos_head(ref_detach).clamp(min=-10, max=10)
            output = layer(
                output,
                ref_detach.unsqueeze(2),
                values,
                spatial_shapes,
                attn_mask,
                query_pos,
                record,
            )
            delta = self.dec_bbox_head[i](output)
            box = F.sigmoid(delta + inverse_sigmoid(ref_detach))
            if all_layers or i == last:
                kept_box = box
                if self.training and ref_grad is not None:
                    kept_box = F.sigmoid(delta + inverse_sigmoid(ref_grad))
                raw = self.dec_score_head[i](output)
                kept["logits_raw"].append(raw)
                kept["logits"].append(raw)
                kept["boxes"].append(kept_box)
            ref_grad = box
            ref_detach = box.detach()
        return LayerOutputs(**kept, pre_boxes=None, pre_logits=None, ref_initial=None)

    # ------------------------------------------------------------------ forward
    def forward(
        self, feats: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, Any]:
        memory, shapes = self._flatten_memory(feats)
        if not self.training:
            sel = self.select_queries(memory, shapes)
            out = self.run_layers(sel.content, sel.boxes_unact, memory, shapes)
            return {"pred_logits": out.logits[-1], "pred_boxes": out.boxes[-1]}
        return self._forward_train(memory, shapes, targets)

    def trace(
        self, feats: list[torch.Tensor], input_size: tuple[int, int], attention: bool = True
    ) -> DecoderTrace:
        """Eval-mode forward that keeps every layer's outputs (see :class:`DecoderTrace`);
        ``attention=False`` leaves out the attention fields."""
        memory, shapes = self._flatten_memory(feats)
        sel = self.select_queries(memory, shapes)
        record: list[AttentionRecord] | None = [] if attention else None
        out = self.run_layers(
            sel.content, sel.boxes_unact, memory, shapes, all_layers=True, record=record
        )
        b, q = sel.indices.shape
        fdr = self.distributions
        attn = {}
        if record is not None:
            attn = {
                name: torch.stack([getattr(r, name) for r in record])
                for name in AttentionRecord._fields
            }
            attn["enc_objectness"] = F.sigmoid(sel.scores)
        return DecoderTrace(
            enc_topk_indices=sel.indices,
            enc_topk_logits=sel.logits,
            init_boxes=F.sigmoid(sel.boxes_unact),
            pre_boxes=out.pre_boxes,
            pre_logits=out.pre_logits,
            boxes=torch.stack(out.boxes),
            logits=torch.stack(out.logits),
            logits_raw=torch.stack(out.logits_raw),
            corners=(
                torch.stack(out.corners).reshape(len(out.corners), b, q, 4, -1) if fdr else None
            ),
            project=self.project() if fdr else None,
            reg_scale=float(self.reg_scale) if fdr else None,
            up=float(self.up) if fdr else None,
            spatial_shapes=shapes,
            input_size=input_size,
            ablation=self.ablation,
            num_points=tuple(self.cfg.num_points),
            **attn,
        )

    def _forward_train(
        self,
        memory: torch.Tensor,
        shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None,
    ) -> dict[str, Any]:
        dn_content = dn_boxes = attn_mask = dn_meta = None
        if self.num_denoising > 0:
            if targets is None:
                raise InvalidArgumentError(
                    "training with denoising needs targets: model(images, targets)"
                )
            dn_content, dn_boxes, attn_mask, dn_meta = contrastive_denoising_group(
                targets,
                self.num_classes,
                self.num_queries,
                self.denoising_class_embed,
                num_denoising=self.num_denoising,
                label_noise_ratio=self.cfg.label_noise_ratio,
                box_noise_scale=self.cfg.box_noise_scale,
            )
        sel = self.select_queries(memory, shapes)
        content, ref_unact = sel.content, sel.boxes_unact
        if dn_boxes is not None:
            ref_unact = torch.concat([dn_boxes, ref_unact], dim=1)
            content = torch.concat([dn_content, content], dim=1)
        out = self.run_layers(content, ref_unact, memory, shapes, attn_mask, all_layers=True)
        n_layers = len(out.boxes)
        stacked: dict[str, torch.Tensor] = {
            "logits": torch.stack(out.logits),
            "boxes": torch.stack(out.boxes),
        }
        if self.distributions:
            stacked["corners"] = torch.stack(out.corners)
            stacked["refs"] = out.ref_initial.unsqueeze(0).expand(n_layers, -1, -1, -1)
            pre = {"pre_logits": out.pre_logits, "pre_boxes": out.pre_boxes}
        else:
            pre = {}

        dn = None
        if dn_meta is not None and dn_boxes is not None:
            split = dn_meta["dn_num_split"][0]
            dn = {k: v[:, :, :split] for k, v in stacked.items()}
            dn.update({k: v[:, :split] for k, v in pre.items()})
            stacked = {k: v[:, :, split:] for k, v in stacked.items()}
            pre = {k: v[:, split:] for k, v in pre.items()}

        logits, boxes = stacked["logits"], stacked["boxes"]
        result: dict[str, Any] = {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": _aux_list(stacked),
            "enc_aux_outputs": [
                {"pred_logits": sel.logits, "pred_boxes": F.sigmoid(sel.boxes_unact_grad)}
            ],
            "enc_meta": {"class_agnostic": False},
        }
        if self.distributions:
            result.update(
                pred_corners=stacked["corners"][-1],
                ref_points=stacked["refs"][-1],
                up=self.up,
                reg_scale=self.reg_scale,
                pre_outputs={"pred_logits": pre["pre_logits"], "pred_boxes": pre["pre_boxes"]},
            )
        if dn is not None:
            result["dn_outputs"] = _aux_list(dn, last=True)
            if self.distributions:
                result["dn_pre_outputs"] = {
                    "pred_logits": dn["pre_logits"],
                    "pred_boxes": dn["pre_boxes"],
                }
            result["dn_meta"] = dn_meta
        return result


def _aux_list(stacked: dict[str, torch.Tensor], last: bool = False) -> list[dict]:
    """Per-layer output dicts of all but the last layer (``last``: of every layer). With
    distributions each also holds its corners, reference boxes and the last layer's (the
    GO-LSD teacher's) corners and logits."""
    logits, boxes = stacked["logits"], stacked["boxes"]
    n = len(logits) if last else len(logits) - 1
    result = [{"pred_logits": logits[i], "pred_boxes": boxes[i]} for i in range(n)]
    if "corners" in stacked:
        corners, refs = stacked["corners"], stacked["refs"]
        for i, r in enumerate(result):
            r.update(
                pred_corners=corners[i],
                ref_points=refs[i],
                teacher_corners=corners[-1],
                teacher_logits=logits[-1],
            )
    return result
