"""Where the decoder looked for one detection: its deformable-attention sampling points and
their weights per layer (:func:`attention_view`), where its query came from in the encoder's
top-k selection (:func:`query_origin`), and which other queries it attended to in
self-attention (:func:`self_attention_neighbours`, the NMS-free mechanism made visible).

Coordinates: a trace's boxes and sampling points are normalised to the original image (for a
letterboxed image ``Detector.trace`` maps them out of the padded input with the boxes' map);
the memory grids cover the network input, which lies at ``trace.input_extent`` of that space.
:class:`InputMap` turns both into pixels of the original image, so points, heat maps, encoder
positions and boxes line up on the image. The heat maps are on each feature level's own grid: a point's weight is split over the four
cells that ``grid_sample`` reads it from, with the same bilinear weights (mass that falls off
the map is lost, as the sampled value there is zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from analysis._common import (
    ImageSize,
    check_image_size,
    check_layer,
    check_queries,
    cxcywh_to_xyxy_px,
    layer_names,
    np64,
    pairwise_iou,
)
from dfine.nn.decoder import DecoderTrace

LevelShape = tuple[int, int]


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class InputMap:
    """Network-input coordinates ↔ the trace's box coordinates ↔ original-image pixels.

    A trace's boxes and sampling points are normalised to the original image (``x × width`` is
    a pixel); the network input, and so every memory grid, covers ``extent`` of that space:
    ``(0, 0, 1, 1)`` for the stretch resize, a larger rectangle for a letterboxed image
    (``trace.input_extent``, set by ``Detector.trace``).

    Attributes:
        image_size: ``(width, height)`` of the original image, pixels.
        extent: ``(x0, y0, x1, y1)`` of the network input in normalised box coordinates.
    """

    image_size: ImageSize
    extent: tuple[float, float, float, float]

    @classmethod
    def of(cls, trace: DecoderTrace, image_size: Sequence[int]) -> InputMap:
        return cls(check_image_size(image_size), tuple(float(v) for v in trace.input_extent))

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """``[..., 2]`` ``(x, y)`` normalised to the network input → original pixels."""
        x0, y0, x1, y1 = self.extent
        uv = np.asarray(uv, dtype=np.float64)
        xy = np.array([x0, y0]) + uv * np.array([x1 - x0, y1 - y0])
        return xy * np.array(self.image_size, dtype=np.float64)

    def to_input(self, xy: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` ``(x, y)`` in normalised box coordinates → normalised to the network
        input (where ``grid_sample`` reads)."""
        x0, y0, x1, y1 = self.extent
        return (xy - xy.new_tensor([x0, y0])) / xy.new_tensor([x1 - x0, y1 - y0])

    def cells(self, shape: LevelShape) -> tuple[np.ndarray, np.ndarray]:
        """The centres of a ``(h, w)`` feature grid over the network input, in original
        pixels: ``x [w]`` and ``y [h]``."""
        h, w = shape
        x = self.to_image(np.stack([(np.arange(w) + 0.5) / w, np.zeros(w)], -1))[:, 0]
        y = self.to_image(np.stack([np.zeros(h), (np.arange(h) + 0.5) / h], -1))[:, 1]
        return x, y


def splat(locations: torch.Tensor, weights: torch.Tensor, shape: LevelShape) -> torch.Tensor:
    """Attention mass per cell of one level's ``(h, w)`` grid.

    ``locations [..., P, 2]`` (x, y) in ``[0, 1]`` of the network input and ``weights [..., P]``
    → ``[..., h, w]``: each weight split over the four cells ``grid_sample`` (bilinear,
    ``align_corners=False``, zero padding) reads at that location, with its bilinear weights;
    the share off the grid is dropped. Sampling a one-hot value map at cell ``c`` and mixing
    with ``weights`` gives exactly ``out[..., c]``.
    """
    h, w = shape
    lead = locations.shape[:-2]
    loc = locations.detach().double().reshape(-1, locations.shape[-2], 2)
    wt = weights.detach().double().reshape(-1, weights.shape[-1])
    u, v = loc[..., 0] * w - 0.5, loc[..., 1] * h - 0.5
    x0, y0 = u.floor(), v.floor()
    fx, fy = u - x0, v - y0
    rows = torch.arange(loc.shape[0], device=loc.device)[:, None].expand_as(u)
    out = torch.zeros(loc.shape[0] * h * w, dtype=torch.float64, device=loc.device)
    for dx, dy, share in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        flat = (rows * h + yi.clamp(0, h - 1)) * w + xi.clamp(0, w - 1)
        out.index_add_(0, flat[inside], (wt * share)[inside])
    return out.reshape(*lead, h, w)


def require_attention(trace: DecoderTrace, what: str) -> None:
    """A one-line error when ``trace`` carries no attention (not an eval-mode trace)."""
    if not trace.has_attention:
        raise ValueError(
            f"{what} needs the decoder's attention, but this trace was taken without it "
            "(attention=False): trace again with model.trace(images) or Detector.trace(image)"
        )


# ----------------------------------------------------------------------------- cross-attention
@dataclass(frozen=True)
class AttentionView:
    """Where one query's deformable cross-attention looked, at every decoder layer (image 0).

    L layers, H heads, P = Σ points per level (grouped by level), V feature levels; pixels
    of the original image.

    Attributes:
        query: the decoder query index.
        image_size: ``(width, height)`` of the original image.
        layers: ``[L]`` layer names.
        strides: ``[V]`` stride of every level (network-input pixels per cell).
        level_shapes: ``[V]`` ``(h, w)`` of every level's grid.
        num_points: ``[V]`` points per level and head.
        reference_xyxy: ``[L, 4]`` the box each layer samples around (its input: b0 for
            layer 1, the previous layer's box after), ``x1, y1, x2, y2``.
        boxes_xyxy: ``[L, 4]`` the box each layer outputs.
        points_px: ``[L, H, P, 2]`` sampling points ``(x, y)``.
        point_level: ``[P]`` int64 level of every point.
        weights: ``[L, H, P]`` attention weights (each head's sum over P is 1).
        heat: ``[V]`` arrays ``[L, H, h, w]``: each head's attention mass per cell of the
            level (see :func:`splat`).
        cell_x: ``[V]`` arrays ``[w]``: centres of the level's columns, pixels.
        cell_y: ``[V]`` arrays ``[h]``: centres of the level's rows, pixels.
    """

    query: int
    image_size: ImageSize
    layers: list[str]
    strides: tuple[int, ...]
    level_shapes: tuple[LevelShape, ...]
    num_points: tuple[int, ...]
    reference_xyxy: np.ndarray
    boxes_xyxy: np.ndarray
    points_px: np.ndarray
    point_level: np.ndarray
    weights: np.ndarray
    heat: tuple[np.ndarray, ...]
    cell_x: tuple[np.ndarray, ...]
    cell_y: tuple[np.ndarray, ...]

    @property
    def num_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def num_heads(self) -> int:
        return self.weights.shape[1]

    def check_heads(self, heads: Sequence[int] | None) -> np.ndarray:
        """Head indices ``[K]`` (``None``: every head), each in ``[0, H)``, sorted, unique."""
        if heads is None:
            return np.arange(self.num_heads)
        picked = np.unique(np.asarray(list(heads), dtype=np.int64))
        if picked.size == 0:
            raise ValueError("choose at least one attention head")
        if picked.min() < 0 or picked.max() >= self.num_heads:
            raise ValueError(f"heads must lie in [0, {self.num_heads}), got {picked.tolist()}")
        return picked

    def heat_map(self, layer: int, level: int, heads: Sequence[int] | None = None) -> np.ndarray:
        """``[h, w]`` the level's mass at ``layer``, averaged over ``heads`` (over every level,
        the maps sum to 1 less what fell off the maps)."""
        lay = check_layer(layer, self.num_layers)
        return self.heat[level][lay, self.check_heads(heads)].mean(0)

    def level_shares(self, layer: int, heads: Sequence[int] | None = None) -> np.ndarray:
        """``[V]`` share of the layer's attention weight on every level (mean over ``heads``)."""
        lay = check_layer(layer, self.num_layers)
        w = self.weights[lay, self.check_heads(heads)].mean(0)
        return np.bincount(self.point_level, weights=w, minlength=len(self.strides))


def attention_view(trace: DecoderTrace, query: int, image_size: Sequence[int]) -> AttentionView:
    """The sampling points, weights and per-level heat maps of decoder query ``query`` (image 0
    of ``trace``) at every layer; ``image_size`` is ``(width, height)`` of the original image."""
    require_attention(trace, "the attention view")
    size = check_image_size(image_size)
    (q,) = check_queries([int(query)], trace.boxes.shape[2])
    imap = InputMap.of(trace, size)
    loc = trace.sampling_locations[:, 0, q]  # [L, H, P, 2], box coordinates
    wt = trace.attention_weights[:, 0, q]  # [L, H, P]
    num_points = tuple(int(n) for n in trace.num_points)
    heat = tuple(
        splat(part_loc, part_w, tuple(shape)).float().cpu().numpy()
        for part_loc, part_w, shape in zip(
            imap.to_input(loc.double()).split(num_points, dim=-2),
            wt.split(num_points, dim=-1),
            trace.spatial_shapes,
        )
    )
    cells = [imap.cells(tuple(shape)) for shape in trace.spatial_shapes]
    boxes = np64(trace.boxes[:, 0, q])
    references = np.concatenate([np64(trace.init_boxes[0, q])[None], boxes[:-1]])
    return AttentionView(
        query=int(q),
        image_size=size,
        layers=layer_names(trace.num_layers),
        strides=tuple(trace.level_strides),
        level_shapes=tuple(tuple(int(v) for v in s) for s in trace.spatial_shapes),
        num_points=num_points,
        reference_xyxy=cxcywh_to_xyxy_px(references, size),
        boxes_xyxy=cxcywh_to_xyxy_px(boxes, size),
        points_px=np64(loc) * np.array(size, dtype=np.float64),
        point_level=trace.point_levels.numpy(),
        weights=np64(wt),
        heat=heat,
        cell_x=tuple(c[0] for c in cells),
        cell_y=tuple(c[1] for c in cells),
    )


# ----------------------------------------------------------------------------- query selection
@dataclass(frozen=True)
class QueryOrigin:
    """Where a query came from: the encoder's objectness per level, the Q positions the top-k
    selection kept, and this query's position and initial box b0 (image 0; original pixels).

    Attributes:
        query: the decoder query index (its rank in the selection: queries are ordered by
            objectness, highest first).
        image_size: ``(width, height)`` of the original image.
        strides: ``[V]`` stride of every level.
        objectness: ``[V]`` arrays ``[h, w]``: the encoder's best class probability per
            position of the level (``trace.enc_objectness``).
        cell_x: ``[V]`` arrays ``[w]``: centres of the level's columns, pixels.
        cell_y: ``[V]`` arrays ``[h]``: centres of the level's rows, pixels.
        selected_level: ``[Q]`` int64 level of every selected position.
        selected_cell: ``[Q, 2]`` int64 ``(row, column)`` of every selected position.
        selected_px: ``[Q, 2]`` centre of every selected position, pixels.
        level: this query's level.
        cell: this query's ``(row, column)``.
        objectness_value: this query's objectness.
        init_box_xyxy: ``[4]`` its initial box b0, ``x1, y1, x2, y2``.
    """

    query: int
    image_size: ImageSize
    strides: tuple[int, ...]
    objectness: tuple[np.ndarray, ...]
    cell_x: tuple[np.ndarray, ...]
    cell_y: tuple[np.ndarray, ...]
    selected_level: np.ndarray
    selected_cell: np.ndarray
    selected_px: np.ndarray
    level: int
    cell: tuple[int, int]
    objectness_value: float
    init_box_xyxy: np.ndarray

    @property
    def num_selected(self) -> int:
        return int(self.selected_level.shape[0])


def unflatten_positions(
    indices: np.ndarray, shapes: Sequence[LevelShape]
) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the flattened multi-level memory (levels in order, row-major within a
    level) → ``(level [N], (row, column) [N, 2])``."""
    sizes = np.array([h * w for h, w in shapes])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= sizes.sum()):
        raise ValueError(f"positions must lie in [0, {sizes.sum()}), got {idx.min()}..{idx.max()}")
    level = np.searchsorted(np.cumsum(sizes), idx, side="right")
    widths = np.array([w for _, w in shapes])
    row, col = np.divmod(idx - starts[level], widths[level])
    return level, np.stack([row, col], axis=-1)


def query_origin(trace: DecoderTrace, query: int, image_size: Sequence[int]) -> QueryOrigin:
    """The encoder objectness maps, the selected positions and query ``query``'s origin and
    b0 (image 0 of ``trace``); ``image_size`` is ``(width, height)`` of the original image."""
    require_attention(trace, "the query origin")
    size = check_image_size(image_size)
    (q,) = check_queries([int(query)], trace.boxes.shape[2])
    imap = InputMap.of(trace, size)
    shapes = [tuple(int(v) for v in s) for s in trace.spatial_shapes]
    maps = tuple(np64(m[0]) for m in trace.objectness_maps())
    level, cell = unflatten_positions(trace.enc_topk_indices[0].cpu().numpy(), shapes)
    norm = np.stack(
        [
            (cell[:, 1] + 0.5) / np.array([w for _, w in shapes])[level],
            (cell[:, 0] + 0.5) / np.array([h for h, _ in shapes])[level],
        ],
        axis=-1,
    )
    cells = [imap.cells(shape) for shape in shapes]
    return QueryOrigin(
        query=int(q),
        image_size=size,
        strides=tuple(trace.level_strides),
        objectness=maps,
        cell_x=tuple(c[0] for c in cells),
        cell_y=tuple(c[1] for c in cells),
        selected_level=level,
        selected_cell=cell,
        selected_px=imap.to_image(norm),
        level=int(level[q]),
        cell=(int(cell[q, 0]), int(cell[q, 1])),
        objectness_value=float(maps[level[q]][cell[q, 0], cell[q, 1]]),
        init_box_xyxy=cxcywh_to_xyxy_px(np64(trace.init_boxes[0, q]), size),
    )


# ----------------------------------------------------------------------------- self-attention
@dataclass(frozen=True)
class SelfAttentionNeighbours:
    """The queries one query attends to most in each layer's self-attention (image 0; the
    weights are averaged over heads; the query itself is left out of the K neighbours).

    The boxes and scores are those the layer saw: its input state (b0 and the encoder's scores
    for layer 1, the previous layer's boxes and scores after), so a duplicate shows as a
    neighbour whose box overlaps this one and whose final score is low.

    Attributes:
        query: the decoder query index.
        image_size: ``(width, height)`` of the original image.
        layers: ``[L]`` layer names.
        query_xyxy: ``[L, 4]`` this query's input box at every layer.
        self_weight: ``[L]`` the weight it gives itself.
        neighbours: ``[L, K]`` int64 query indices, highest weight first.
        weights: ``[L, K]`` their self-attention weights (rows sum to 1 over all Q keys).
        boxes_xyxy: ``[L, K, 4]`` their input boxes.
        labels: ``[L, K]`` int64 their best class at the layer's input.
        scores: ``[L, K]`` that class's probability at the layer's input.
        final_scores: ``[L, K]`` their best class probability after the last layer (a
            suppressed duplicate scores low).
        iou: ``[L, K]`` IoU of their input box with this query's input box.
    """

    query: int
    image_size: ImageSize
    layers: list[str]
    query_xyxy: np.ndarray
    self_weight: np.ndarray
    neighbours: np.ndarray
    weights: np.ndarray
    boxes_xyxy: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    final_scores: np.ndarray
    iou: np.ndarray

    @property
    def num_layers(self) -> int:
        return self.neighbours.shape[0]


def self_attention_neighbours(
    trace: DecoderTrace, query: int, image_size: Sequence[int], k: int = 5
) -> SelfAttentionNeighbours:
    """The ``k`` queries ``query`` attends to most at every layer, with the boxes and scores
    the layer saw (image 0 of ``trace``)."""
    require_attention(trace, "the self-attention neighbours")
    size = check_image_size(image_size)
    num_queries = trace.boxes.shape[2]
    (q,) = check_queries([int(query)], num_queries)
    if not 1 <= k < num_queries:
        raise ValueError(f"k must be in [1, {num_queries - 1}], got {k}")
    attn = np64(trace.self_attention[:, 0, q])  # [L, Q]
    others = attn.copy()
    others[:, q] = -np.inf
    top = np.argsort(-others, axis=-1, kind="stable")[:, :k]  # [L, K]
    boxes = np64(torch.cat([trace.init_boxes[0][None], trace.boxes[:-1, 0]]))
    probs = np64(torch.cat([trace.enc_topk_logits[0][None], trace.logits[:-1, 0]]).sigmoid())
    final = np64(trace.logits[-1, 0].sigmoid()).max(-1)
    xyxy = cxcywh_to_xyxy_px(boxes, size)  # [L, Q, 4]
    layer = np.arange(trace.num_layers)[:, None]
    neighbour_xyxy = xyxy[layer, top]
    return SelfAttentionNeighbours(
        query=int(q),
        image_size=size,
        layers=layer_names(trace.num_layers),
        query_xyxy=xyxy[:, q],
        self_weight=attn[:, q],
        neighbours=top,
        weights=np.take_along_axis(attn, top, axis=-1),
        boxes_xyxy=neighbour_xyxy,
        labels=probs[layer, top].argmax(-1),
        scores=probs[layer, top].max(-1),
        final_scores=final[top],
        iou=pairwise_iou(neighbour_xyxy, xyxy[:, q][:, None]),
    )
