"""The D-FINE training loss.

Terms (each multiplied by its weight; suffixes ``_aux_i`` intermediate decoder layers, ``_pre``
the first layer's traditional head, ``_enc_0`` the encoder's top-k, ``_dn_i`` / ``_dn_pre``
the denoising groups):

- ``loss_vfl``: varifocal classification loss, IoU-aware targets.
- ``loss_mal``: DEIM's Matchability-Aware Loss (instead of ``loss_vfl`` in DEIM's criterion):
  targets ``IoU^gamma``, positives weighted 1, negatives ``p^gamma``.
- ``loss_bbox`` / ``loss_giou``: L1 and GIoU on matched boxes.
- ``loss_fgl``: Fine-Grained Localization loss — cross-entropy on the two bins around each
  edge's target offset, interpolated, weighted by the box IoU.
- ``loss_ddf``: Decoupled Distillation Focal loss (GO-LSD) — KL divergence from the final
  layer's (teacher's) softened edge distributions to each earlier layer's, weighted by the
  IoU (matched queries) or the teacher's confidence (unmatched ones), the two groups balanced.

Box and localization losses use the **union of matches over all layers** (GO-LSD), so every
query that some layer matched to an object is trained to localise it.

Ablation switches (the paper's ablation, see :data:`dfine.config.ABLATIONS`): a criterion
with ``golsd=False`` drops GO-LSD — no ``loss_ddf`` and each output set trained on its own
matching instead of the union; a model without distributions (``ablation="fdr"``) has no
``pred_corners``, so only VFL, L1 and GIoU remain (RT-DETR's loss). :func:`build_criterion`
sets the switch from the model's config.

DEIM (``engine/deim/deim_criterion.py``, ``configs/base/deim.yml``) trains the same outputs
with ``losses=("mal", "boxes", "local")``, MAL's ``gamma`` 1.5, weights
:data:`DEIM_WEIGHTS` and the same matcher; its only other difference is that a student identical
to its teacher (the last denoising layer) gets no ``loss_ddf`` term at all, where D-FINE adds a
zero (``zero_identical_ddf``). ``build_criterion(model, loss="deim")`` builds it.

The functions below are the single implementation; ``analysis/`` calls them too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou

from dfine.box_ops import box_cxcywh_to_xyxy
from dfine.errors import InvalidArgumentError
from dfine.loss.matcher import HungarianMatcher, Indices
from dfine.nn.fdr import bbox2distance

DEFAULT_WEIGHTS = {
    "loss_vfl": 1.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_fgl": 0.15,
    "loss_ddf": 1.5,
}
DEIM_WEIGHTS = {
    "loss_mal": 1.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_fgl": 0.15,
    "loss_ddf": 1.5,
}
LOSS_KINDS = ("dfine", "deim")
"""Criteria :func:`build_criterion` builds: D-FINE's (VFL) and DEIM's (MAL)."""


# ----------------------------------------------------------------------------- matching helpers
def src_permutation(indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched prediction, concatenated over images."""
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


def matched_targets(targets: list[dict], indices: Indices, key: str) -> torch.Tensor:
    return torch.cat([t[key][j] for t, (_, j) in zip(targets, indices)], dim=0)


def union_matches(indices: Indices, others: list[Indices]) -> Indices:
    """GO-LSD union of matchings: per image, all (query, target) pairs of every layer; a query
    matched to different targets keeps the target it was matched to most often (ties broken
    as the reference: by ``argsort`` of the counts, descending)."""
    pairs = [torch.cat([rows[:, None], cols[:, None]], 1) for rows, cols in indices]
    for other in others:
        pairs = [
            torch.cat([p, torch.cat([r[:, None], c[:, None]], 1)])
            for p, (r, c) in zip(pairs, other)
        ]
    result = []
    for p in pairs:
        unique, counts = torch.unique(p, return_counts=True, dim=0)
        ranked = unique[torch.argsort(counts, descending=True)]
        rows = ranked[:, 0]
        # keep each query's first (most frequent) pair, in first-seen order
        _, inverse = torch.unique(rows, return_inverse=True)
        position = torch.arange(len(rows), device=rows.device)
        first = torch.full(
            (int(inverse.max()) + 1 if len(rows) else 0,), len(rows), device=rows.device
        )
        first = first.scatter_reduce(0, inverse, position, reduce="amin")
        keep = first.sort().values
        result.append((ranked[keep, 0].long(), ranked[keep, 1].long()))
    return result


# ----------------------------------------------------------------------------- loss functions
def varifocal_loss(
    logits: torch.Tensor,
    target_classes: torch.Tensor,
    ious: torch.Tensor,
    idx: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    alpha: float,
    gamma: float,
    num_boxes: float,
) -> torch.Tensor:
    """VFL. ``logits [B, Q, C]``; ``target_classes [M]`` and ``ious [M]`` of the matched queries
    at ``idx``. Positives are pushed to their IoU, negatives down with focal weight
    ``alpha * p^gamma``."""
    classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    classes[idx] = target_classes
    onehot = F.one_hot(classes, num_classes=num_classes + 1)[..., :-1]
    score = torch.zeros_like(classes, dtype=logits.dtype)
    score[idx] = ious.to(score.dtype)
    target = score.unsqueeze(-1) * onehot
    pred = F.sigmoid(logits).detach()
    weight = alpha * pred.pow(gamma) * (1 - onehot) + target
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


def matchability_aware_loss(
    logits: torch.Tensor,
    target_classes: torch.Tensor,
    ious: torch.Tensor,
    idx: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    gamma: float,
    num_boxes: float,
    alpha: float | None = None,
) -> torch.Tensor:
    """DEIM's MAL. ``logits [B, Q, C]``; ``target_classes [M]`` and ``ious [M]`` of the matched
    queries at ``idx``. Positives are pushed to ``IoU^gamma`` with weight 1, negatives down with
    weight ``p^gamma`` (times ``alpha`` when given: DEIM's ``mal_alpha``, unset in its configs)."""
    classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    classes[idx] = target_classes
    onehot = F.one_hot(classes, num_classes=num_classes + 1)[..., :-1]
    score = torch.zeros_like(classes, dtype=logits.dtype)
    score[idx] = ious.to(score.dtype)
    target = (score.unsqueeze(-1) * onehot).pow(gamma)
    pred = F.sigmoid(logits).detach()
    negative = pred.pow(gamma) * (1 - onehot)
    weight = (negative if alpha is None else alpha * negative) + onehot
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


def box_losses(
    src_boxes: torch.Tensor, target_boxes: torch.Tensor, num_boxes: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, 1 - GIoU) summed over matched pairs ``[M, 4]`` (cxcywh), divided by num_boxes."""
    l1 = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
    giou = torch.diag(
        generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
    )
    return l1, (1 - giou).sum() / num_boxes


def matched_ious(src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """IoU ``[M]`` of matched pairs (cxcywh)."""
    return torch.diag(box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes)))


def fgl_loss(
    pred_corners: torch.Tensor,
    target_bins: torch.Tensor,
    weight_right: torch.Tensor,
    weight_left: torch.Tensor,
    weight: torch.Tensor | None,
    avg_factor: float,
) -> torch.Tensor:
    """Fine-Grained Localization loss.

    ``pred_corners [N, R+1]`` bin logits of N edges; ``target_bins [N]`` continuous targets in
    bin units; the cross-entropies on the bins left and right of the target are mixed by
    ``weight_left`` / ``weight_right`` and weighted per edge by ``weight`` (the box IoU).
    """
    left = target_bins.long()
    right = left + 1
    loss = F.cross_entropy(pred_corners, left, reduction="none") * weight_left.reshape(-1)
    loss = loss + F.cross_entropy(pred_corners, right, reduction="none") * weight_right.reshape(-1)
    if weight is not None:
        loss = loss * weight.float()
    return loss.sum() / avg_factor


def ddf_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 5.0) -> torch.Tensor:
    """Per-edge ``KL(softmax(teacher/T) || softmax(student/T))``: ``[N, R+1]`` → ``[N]``."""
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.softmax(teacher.detach() / temperature, dim=1),
        reduction="none",
    )
    return kl.sum(-1)


def ddf_weights(
    teacher_logits: torch.Tensor, idx: tuple[torch.Tensor, torch.Tensor], ious: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDF weight and matched mask per edge ``[B*Q*4]``: matched queries are weighted by their
    IoU, unmatched ones by the teacher's top class probability."""
    weight = teacher_logits.sigmoid().max(dim=-1)[0]
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[idx] = True
    weight[idx] = ious.reshape_as(weight[idx]).to(weight.dtype)
    return (
        weight.unsqueeze(-1).repeat(1, 1, 4).reshape(-1).detach(),
        mask.unsqueeze(-1).repeat(1, 1, 4).reshape(-1),
    )


def ddf_balance(mask: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled weights of the matched and unmatched groups: sqrt of their edge counts,
    scaled to a batch of 8 images per device (as the reference)."""
    scale = 8 / batch_size
    return (mask.sum() * scale) ** 0.5, ((~mask).sum() * scale) ** 0.5


def ddf_loss(
    kl: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    num_pos: torch.Tensor,
    num_neg: torch.Tensor,
    temperature: float = 5.0,
) -> torch.Tensor:
    """Decoupled Distillation Focal loss from per-edge KL ``[N]`` (see :func:`ddf_kl`), weights
    and matched mask: ``T^2``-scaled weighted KL, averaged within the matched and unmatched
    groups, the two averages mixed by ``num_pos : num_neg``."""
    weighted = weight * (temperature**2) * kl
    pos = weighted[mask].mean() if mask.any() else 0
    neg = weighted[~mask].mean() if (~mask).any() else 0
    return (pos * num_pos + neg * num_neg) / (num_pos + num_neg)


def ddf_terms(
    out: dict,
    idx: tuple[torch.Tensor, torch.Tensor],
    ious: torch.Tensor,
    reg_max: int,
    temperature: float,
    balance: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """GO-LSD distillation of one student output set (``pred_corners``, ``teacher_corners``,
    ``teacher_logits``, ``pred_boxes``) at the union matches ``idx`` with their IoUs ``[M]``.

    Returns ``(loss_ddf, kl [N], weight [N], mask [N], balance)`` over the ``N = B*Q*4`` edges;
    ``balance`` (matched, unmatched group weights) is computed here unless given. A student
    identical to its teacher (the last layer) gives a zero loss, as in the reference.
    """
    student = out["pred_corners"].reshape(-1, reg_max + 1)
    teacher = out["teacher_corners"].reshape(-1, reg_max + 1)
    weight, mask = ddf_weights(out["teacher_logits"], idx, ious)
    kl = ddf_kl(student, teacher, temperature)
    if balance is None:
        balance = ddf_balance(mask, out["pred_boxes"].shape[0])
    if torch.equal(student, teacher):
        loss = student.sum() * 0
    else:
        loss = ddf_loss(kl, weight, mask, *balance, temperature=temperature)
    return loss, kl, weight, mask, balance


# ----------------------------------------------------------------------------- the criterion
class DFINECriterion(nn.Module):
    """D-FINE's loss over all outputs of a train-mode forward.

    ``forward(outputs, targets)`` → dict of weighted scalar terms (see the module docstring);
    the training loss is their sum. ``last_nonfinite`` lists terms that were NaN before being
    zeroed (the reference zeroes NaN terms; the trainer reports them). ``golsd=False`` turns
    GO-LSD off: no DDF self-distillation, and box/FGL losses of every output set on that set's
    own Hungarian matching (normalised by the target count) instead of the union of matches.

    ``losses`` holds ``vfl`` (D-FINE) or ``mal`` (DEIM; ``gamma`` is then MAL's, ``mal_alpha``
    its optional negative weight), ``boxes`` and ``local``; ``zero_identical_ddf=False`` drops
    the ``loss_ddf`` term of a student identical to its teacher instead of adding a zero (DEIM).
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        num_classes: int,
        weight_dict: dict[str, float] | None = None,
        losses: tuple[str, ...] = ("vfl", "boxes", "local"),
        alpha: float = 0.75,
        gamma: float = 2.0,
        reg_max: int = 32,
        temperature: float = 5.0,
        golsd: bool = True,
        mal_alpha: float | None = None,
        zero_identical_ddf: bool = True,
    ) -> None:
        super().__init__()
        unknown = set(losses) - {"vfl", "mal", "boxes", "local"}
        if unknown:
            raise InvalidArgumentError(
                f"unknown loss {sorted(unknown)}; choose from vfl, mal, boxes, local"
            )
        self.golsd = golsd
        self.mal_alpha = mal_alpha
        self.zero_identical_ddf = zero_identical_ddf
        self.matcher = matcher
        self.num_classes = num_classes
        self.weight_dict = dict(DEFAULT_WEIGHTS if weight_dict is None else weight_dict)
        self.losses = tuple(losses)
        self.alpha, self.gamma = alpha, gamma
        self.reg_max = reg_max
        self.temperature = temperature
        self.last_nonfinite: list[str] = []

    # ---------------------------------------------------------------- one output set
    def _terms(
        self,
        out: dict,
        targets: list[dict],
        cls_indices: Indices,
        box_indices: Indices,
        num_cls: float,
        num_box: float,
        cache: dict,
        is_dn: bool = False,
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if {"vfl", "mal"} & set(self.losses):
            # the classification loss of either family: IoU-aware targets of the matched queries
            idx = src_permutation(cls_indices)
            ious = matched_ious(
                out["pred_boxes"][idx], matched_targets(targets, cls_indices, "boxes")
            ).detach()
            labels = matched_targets(targets, cls_indices, "labels")
            logits, k = out["pred_logits"], self.num_classes
            if "vfl" in self.losses:
                terms["loss_vfl"] = varifocal_loss(
                    logits, labels, ious, idx, k, self.alpha, self.gamma, num_cls
                )
            if "mal" in self.losses:
                terms["loss_mal"] = matchability_aware_loss(
                    logits, labels, ious, idx, k, self.gamma, num_cls, self.mal_alpha
                )
        idx = src_permutation(box_indices)
        src = out["pred_boxes"][idx]
        tgt = matched_targets(targets, box_indices, "boxes")
        if "boxes" in self.losses:
            terms["loss_bbox"], terms["loss_giou"] = box_losses(src, tgt, num_box)
        if "local" in self.losses and "pred_corners" in out:
            terms.update(self._local(out, idx, src, tgt, num_box, cache, is_dn))
        return terms

    def _local(self, out, idx, src, tgt, num_box, cache, is_dn) -> dict[str, torch.Tensor]:
        terms = {}
        key = "fgl_dn" if is_dn else "fgl"
        # the reference layer (pre-boxes) is shared by all layers, and so are the matches of
        # the union (GO-LSD) and of denoising; per-layer matches need their own targets
        if not (self.golsd or is_dn):
            cache.pop(key, None)
        if key not in cache:
            with torch.no_grad():
                cache[key] = bbox2distance(
                    out["ref_points"][idx].detach(),
                    box_cxcywh_to_xyxy(tgt),
                    self.reg_max,
                    out["reg_scale"],
                    out["up"],
                )
        bins, w_right, w_left = cache[key]
        ious = matched_ious(src, tgt)
        edge_weight = ious.unsqueeze(-1).repeat(1, 1, 4).reshape(-1).detach()
        corners = out["pred_corners"][idx].reshape(-1, self.reg_max + 1)
        terms["loss_fgl"] = fgl_loss(corners, bins, w_right, w_left, edge_weight, num_box)
        if self.golsd and "teacher_corners" in out and self._distils(out):
            balance = cache.get("ddf_balance") if is_dn else None
            terms["loss_ddf"], *_, balance = ddf_terms(
                out, idx, ious, self.reg_max, self.temperature, balance
            )
            if not is_dn:
                cache["ddf_balance"] = balance
        return terms

    def _distils(self, out: dict) -> bool:
        """Whether ``out`` gets a ``loss_ddf`` term: always in D-FINE (zero for the teacher
        itself), only for a student that differs from its teacher in DEIM."""
        if self.zero_identical_ddf:
            return True
        return not torch.equal(out["pred_corners"], out["teacher_corners"])

    def _weighted(self, terms: dict[str, torch.Tensor], suffix: str) -> dict[str, torch.Tensor]:
        return {
            k + suffix: v * self.weight_dict[k] for k, v in terms.items() if k in self.weight_dict
        }

    # ---------------------------------------------------------------- all outputs
    def match_all(self, outputs: dict, targets: list[dict]) -> dict[str, Any]:
        """Matchings of every output set and their GO-LSD union (also used by the analysis)."""
        final = self.matcher({k: outputs[k] for k in ("pred_logits", "pred_boxes")}, targets)
        aux = [self.matcher(o, targets) for o in outputs.get("aux_outputs", [])]
        pre = self.matcher(outputs["pre_outputs"], targets) if "pre_outputs" in outputs else None
        enc = [self.matcher(o, targets) for o in outputs.get("enc_aux_outputs", [])]
        others = aux + ([pre] if pre is not None else []) + enc
        return {
            "final": final,
            "aux": aux,
            "pre": pre,
            "enc": enc,
            "union": union_matches(final, others),  # used by the loss only with GO-LSD
        }

    def forward(self, outputs: dict, targets: list[dict], **_: Any) -> dict[str, torch.Tensor]:
        if "aux_outputs" not in outputs:
            raise InvalidArgumentError("the criterion needs train-mode outputs (model.train())")
        device = outputs["pred_logits"].device
        m = self.match_all(outputs, targets)
        num_boxes = _global_mean_count(sum(len(t["labels"]) for t in targets), device)
        if self.golsd:
            num_go = _global_mean_count(sum(len(r) for r, _ in m["union"]), device)
        else:
            num_go = num_boxes
        shared = {k: outputs[k] for k in ("up", "reg_scale") if k in outputs}
        cache: dict = {}

        def box_matches(own: Indices) -> Indices:
            return m["union"] if self.golsd else own

        losses = self._weighted(
            self._terms(
                outputs, targets, m["final"], box_matches(m["final"]), num_boxes, num_go, cache
            ),
            "",
        )
        for i, aux in enumerate(outputs["aux_outputs"]):
            aux = {**aux, **shared}
            own = m["aux"][i]
            terms = self._terms(aux, targets, own, box_matches(own), num_boxes, num_go, cache)
            losses.update(self._weighted(terms, f"_aux_{i}"))
        if m["pre"] is not None:
            own = m["pre"]
            terms = self._terms(
                outputs["pre_outputs"], targets, own, box_matches(own), num_boxes, num_go, cache
            )
            losses.update(self._weighted(terms, "_pre"))
        for i, enc in enumerate(outputs.get("enc_aux_outputs", [])):
            own = m["enc"][i]
            terms = self._terms(enc, targets, own, box_matches(own), num_boxes, num_go, cache)
            losses.update(self._weighted(terms, f"_enc_{i}"))
        if "dn_outputs" in outputs:
            losses.update(self._denoising_terms(outputs, targets, num_boxes, shared, cache))
        self.last_nonfinite = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        # the reference zeroes NaN terms (kept for identical training dynamics; reported above)
        return {k: torch.nan_to_num(v, nan=0.0) for k, v in losses.items()}

    def _denoising_terms(
        self, outputs, targets, num_boxes, shared, cache
    ) -> dict[str, torch.Tensor]:
        meta = outputs["dn_meta"]
        indices = denoising_indices(meta, targets)
        num_dn = num_boxes * meta["dn_num_group"]
        num_dn = num_dn if num_dn > 0 else 1
        losses = {}
        for i, dn in enumerate(outputs["dn_outputs"]):
            dn = {**dn, **shared}
            terms = self._terms(dn, targets, indices, indices, num_dn, num_dn, cache, is_dn=True)
            losses.update(self._weighted(terms, f"_dn_{i}"))
        if "dn_pre_outputs" in outputs:
            terms = self._terms(
                outputs["dn_pre_outputs"],
                targets,
                indices,
                indices,
                num_dn,
                num_dn,
                cache,
                is_dn=True,
            )
            losses.update(self._weighted(terms, "_dn_pre"))
        return losses


def denoising_indices(meta: dict, targets: list[dict]) -> Indices:
    """Matches of denoising queries: each positive copy to the target it was made from."""
    result = []
    for i, t in enumerate(targets):
        n = len(t["labels"])
        device = t["labels"].device
        if n > 0:
            gt = torch.arange(n, dtype=torch.int64, device=device).tile(meta["dn_num_group"])
            result.append((meta["dn_positive_idx"][i], gt))
        else:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            result.append((empty, empty))
    return result


def _global_mean_count(count: int, device: torch.device) -> float:
    """Box count averaged over distributed ranks, at least 1."""
    value = torch.as_tensor([count], dtype=torch.float, device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)
        world = torch.distributed.get_world_size()
    return torch.clamp(value / world, min=1).item()


def build_criterion(
    model: nn.Module | None = None,
    num_classes: int | None = None,
    loss: str | None = None,
    **overrides,
) -> DFINECriterion:
    """The reference criterion configuration of ``loss`` (see :data:`LOSS_KINDS`; default: the
    model's family, else ``dfine``).

    - ``dfine``: weights vfl 1, bbox 5, giou 2, fgl 0.15, ddf 1.5; VFL alpha 0.75, gamma 2;
    - ``deim`` (``configs/base/deim.yml``): weights mal 1, bbox 5, giou 2, fgl 0.15, ddf 1.5;
      MAL gamma 1.5; no ``loss_ddf`` term for the teacher layer itself.

    Both match with class 2, bbox 5, giou 2, focal alpha 0.25, gamma 2. GO-LSD is on unless the
    model's config has ``ablation`` ``golsd`` or ``fdr`` (an explicit ``golsd=`` override
    wins)."""
    if num_classes is None:
        if model is None:
            raise InvalidArgumentError("build_criterion needs a model or num_classes")
        num_classes = model.num_classes
    if loss is None:
        loss = model.config.family if model is not None else "dfine"
    if loss not in LOSS_KINDS:
        raise InvalidArgumentError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_KINDS)}")
    reg_max = model.config.decoder.reg_max if model is not None else 32
    if model is not None and "golsd" not in overrides:
        overrides["golsd"] = model.config.decoder.ablation == "none"
    if loss == "deim":
        deim = {
            "weight_dict": DEIM_WEIGHTS,
            "losses": ("mal", "boxes", "local"),
            "gamma": 1.5,
            "zero_identical_ddf": False,
        }
        overrides = {**deim, **overrides}
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2.0)
    return DFINECriterion(matcher, num_classes, reg_max=reg_max, **overrides)
