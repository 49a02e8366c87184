"""From DEKR network outputs to poses: centre peaks, regression, flip/multi-scale fusion, NMS.

Shapes: ``B`` images, ``K`` keypoints (``spec.num_keypoints``), ``h x w`` output map of one scale,
``N`` candidates (``max_people`` per scale), ``P`` output slots (``max_people``).

Outputs of one scale (:class:`ScaleOutput`) are raw network outputs: ``heatmaps [B, K+1, h, w]``
(channel K is the person centre) and ``offsets [B, 2K, h, w]`` (``pixel - keypoint``, interleaved
``x0, y0, x1, ...``, output px). For flip testing, ``heatmaps_flip``/``offsets_flip`` are the outputs
for the horizontally flipped input shifted left by ``stride - 1`` pixels (see
:func:`dekr.inference.predictor.flip_input`), which makes output column ``j`` of the flipped pass
exactly the mirror ``w - 1 - j`` of the plain pass.

Decoded poses are in *input pixels of the factor-1 geometry* (output px × stride / factor); map them
to the original image with :func:`dekr.inference.geometry.input_to_original`.

Reproduces the reference test pipeline by default (see ``../shared/oracle/README.md``, items 1, 2
and 10): joint score = centre score × keypoint heat read at the *floored* pixel of the heatmap
upsampled to input resolution (align-corners bilinear on a ``stride*h - stride + 1`` grid with
replicated last rows), pose NMS with the asymmetric group rule. The full-resolution heatmap is never
built: only the needed samples are interpolated (flip fusion is done on the samples too).
Measured against the official code on fabricated outputs (``tests/data/decode_golden.npz``,
``benchmarks/make_decode_fixture.py``): identical poses (0 px), scores within 6e-8.

Differences from the reference, all outside its working range or as options:

* a candidate whose joints all coincide (zero extent) is its own duplicate here; the reference
  raises on it (``argmax`` of an empty group);
* the inverse affine uses the factor-1 geometry; the reference uses the last (smallest) scale's
  box, identical whenever the scaled input sizes are integers (all usual factors);
* multi-scale inputs whose upsampled heatmaps differ in size by a pixel work here (each scale is
  sampled on its own grid); the reference fails to add them;
* options: ``joint_score="bilinear"``, ``nms_symmetric``, ``nms_group_rule=False``, and the
  vectorized heatmap matching of :mod:`dekr.inference.match`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dekr.inference.nms import pose_nms
from dekr.keypoints import KeypointSpec


@dataclass(frozen=True)
class DecodeConfig:
    """Every threshold of the decoder (defaults: the reference's COCO test settings).

    Attributes:
        max_people: centre candidates per scale and poses per image kept (reference 30).
        center_threshold: minimum centre heat of a candidate (reference 0.01).
        pool_thresholds: ``(t1, t2)``; centre max-pool kernel is 7 if ``(h+w)/2 > t1``, 5 if
            ``> t2``, else 3 (map size of each scale).
        nms_distance: pose-NMS joint distance as a fraction of ``sqrt(w² + h²)`` of the pose (0.05).
        nms_min_joints: poses sharing more than this many close joints are duplicates (8).
        nms_symmetric: use the larger extent of both poses (option) instead of the first one's.
        nms_group_rule: reference group rule (True) or greedy NMS by heat score (False).
        joint_score: ``"floor"`` (reference: heat at the floored input pixel) or ``"bilinear"``
            (heat interpolated at the exact joint position).
        scale_decrease: centre scores of scales other than 1 are rescaled to the best scale-1 score
            times this factor (reference COCO yaml: 0.9).
        stride: output stride of the network (input px per output px).
        match_heatmap: snap regressed joints to nearby keypoint-heatmap peaks (reference
            ``MATCH_HMP``, off by default), see :mod:`dekr.inference.match`.
        match_max_distance: largest snapping distance, input px (75).
        match_peak_kernel: max-pool kernel of the keypoint peak search (5).
        adjust_threshold: minimum joint score for the Gaussian refinement after snapping (0.05).
        adjust_window: half-size of the refinement window, input px (6).
    """

    max_people: int = 30
    center_threshold: float = 0.01
    pool_thresholds: tuple[float, float] = (300.0, 200.0)
    nms_distance: float = 0.05
    nms_min_joints: int = 8
    nms_symmetric: bool = False
    nms_group_rule: bool = True
    joint_score: str = "floor"
    scale_decrease: float = 0.9
    stride: int = 4
    match_heatmap: bool = False
    match_max_distance: float = 75.0
    match_peak_kernel: int = 5
    adjust_threshold: float = 0.05
    adjust_window: int = 6

    def __post_init__(self) -> None:
        if self.joint_score not in ("floor", "bilinear"):
            raise ValueError(f"decode: joint_score '{self.joint_score}' unknown; use 'floor' or 'bilinear'")
        if self.max_people < 1:
            raise ValueError(f"decode: max_people must be >= 1, got {self.max_people}")


@dataclass
class ScaleOutput:
    """Network outputs at one test scale (flip tensors ``None`` without flip test)."""

    factor: float
    heatmaps: torch.Tensor
    offsets: torch.Tensor
    heatmaps_flip: torch.Tensor | None = None
    offsets_flip: torch.Tensor | None = None


@dataclass
class DecodedPoses:
    """Padded batch of decoded poses.

    Attributes:
        poses: float32 ``[B, P, K, 3]``: x, y (input px of the factor-1 geometry), joint score.
        scores: float32 ``[B, P]`` person score (mean joint score, before rescoring).
        valid: bool ``[B, P]``; slots after the last valid one are padding.
    """

    poses: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor

    def counts(self) -> list[int]:
        """Number of people per image."""
        return self.valid.sum(1).tolist()


def pool_kernel(h: int, w: int, thresholds: tuple[float, float] = (300.0, 200.0)) -> int:
    """Centre max-pool kernel from the map size ``(h + w) / 2`` (7, 5 or 3)."""
    size = (h + w) / 2.0
    return 7 if size > thresholds[0] else 5 if size > thresholds[1] else 3


def fuse_flip_heatmaps(heatmaps: torch.Tensor, heatmaps_flip: torch.Tensor, flip_index: torch.Tensor) -> torch.Tensor:
    """Average plain and flipped-pass heatmaps ``[B, K+1, h, w]`` (flip back, swap left/right)."""
    return (heatmaps + heatmaps_flip.flip(-1)[:, flip_index]) / 2.0


def max_filter(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """``kernel x kernel`` running maximum of ``[..., h, w]`` (same size; borders see only the map).

    Equals ``max_pool2d(stride=1, padding=kernel // 2)``; separable, much faster on CPU.
    """
    r = kernel // 2
    h, w = maps.shape[-2:]
    padded = F.pad(maps, (r, r, r, r), value=-torch.inf)
    rows = padded[..., :, 0:w]
    for dx in range(1, kernel):
        rows = torch.maximum(rows, padded[..., :, dx:dx + w])
    out = rows[..., 0:h, :]
    for dy in range(1, kernel):
        out = torch.maximum(out, rows[..., dy:dy + h, :])
    return out


def find_centers(
    center_map: torch.Tensor, max_people: int, threshold: float, kernel: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local maxima of the centre heatmap.

    Args:
        center_map: float ``[B, h, w]``.

    Returns:
        ``scores`` float ``[B, N]`` (descending), ``index`` long ``[B, N]`` flat ``y * w + x``,
        ``valid`` bool ``[B, N]`` (score above threshold), ``N = min(max_people, h * w)``.
    """
    pooled = max_filter(center_map, kernel)
    peaks = center_map * (pooled == center_map)
    n = min(max_people, peaks.shape[1] * peaks.shape[2])
    scores, index = peaks.flatten(1).topk(n, dim=1)
    return scores, index, scores > threshold


def _gather_offsets(offsets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Offsets ``[B, 2K, h, w]`` at flat indices ``[B, N]`` → ``[B, N, K, 2]``."""
    b, c, _, _ = offsets.shape
    n = index.shape[1]
    picked = offsets.flatten(2).gather(2, index[:, None, :].expand(b, c, n))  # [B, 2K, N]
    return picked.view(b, c // 2, 2, n).permute(0, 3, 1, 2)


def regress_poses(
    offsets: torch.Tensor,
    index: torch.Tensor,
    offsets_flip: torch.Tensor | None = None,
    flip_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Poses ``location - offset`` at the centre candidates, in output px.

    With flip outputs, the flipped pass is read at the mirrored column ``w - 1 - x``, its joints are
    swapped left/right and mirrored back (``x -> w - 1 - x``), and the two poses are averaged.

    Args:
        offsets: float ``[B, 2K, h, w]``; index: long ``[B, N]`` flat ``y * w + x``.

    Returns:
        float ``[B, N, K, 2]`` in output px.
    """
    w = offsets.shape[-1]
    x, y = index % w, torch.div(index, w, rounding_mode="floor")
    loc = torch.stack((x, y), dim=-1).to(offsets.dtype)[:, :, None, :]  # [B, N, 1, 2]
    poses = loc - _gather_offsets(offsets, index)
    if offsets_flip is None:
        return poses
    if flip_index is None:
        raise ValueError("regress_poses: flip outputs given without flip_index")
    xf = w - 1 - x
    loc_f = torch.stack((xf, y), dim=-1).to(offsets.dtype)[:, :, None, :]
    flipped = (loc_f - _gather_offsets(offsets_flip, y * w + xf))[:, :, flip_index]
    flipped = torch.stack((w - flipped[..., 0] - 1, flipped[..., 1]), dim=-1)
    return (poses + flipped) / 2.0


def _grid_coord(coord: torch.Tensor, map_len: int, ratio: float, floor: bool) -> torch.Tensor:
    """Map coordinate sampled by input pixel ``coord`` of the reference's upsampled heatmap.

    The reference upsamples a length-``map_len`` axis to ``S = int(ratio * map_len)`` samples:
    align-corners bilinear onto ``S - int(S / map_len) + 1`` samples, then replicates the last one.
    """
    size = int(ratio * map_len)
    inner = size - int(size / map_len) + 1
    step = (map_len - 1) / (inner - 1) if inner > 1 else 0.0
    if floor:
        coord = coord.floor().clamp(0, size - 1)
    return coord.clamp(0, inner - 1) * step


def sample_heat(
    heatmaps: torch.Tensor, poses: torch.Tensor, ratio: float, floor: bool = True,
    heatmaps_flip: torch.Tensor | None = None, flip_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keypoint heat of each joint, as read from the (flip-fused) upsampled heatmap.

    Args:
        heatmaps: float ``[B, K+1, h, w]`` heatmaps of one scale (centre channel ignored).
        poses: float ``[B, N, K, 2]`` joints in input px of the factor-1 geometry.
        ratio: input px per map px of this scale (``stride / factor``).
        floor: read at the floored pixel (reference) or interpolate at the exact position.
        heatmaps_flip, flip_index: flipped-pass heatmaps and the keypoint flip permutation; the
            value is then the average of both passes, read at mirrored positions in the flipped one
            (equal to reading the fused map, without building it).

    Returns:
        float ``[B, N, K]``.
    """
    _, c, h, w = heatmaps.shape
    gx = _grid_coord(poses[..., 0], w, ratio, floor).clamp(0, w - 1)
    gy = _grid_coord(poses[..., 1], h, ratio, floor).clamp(0, h - 1)
    channels = torch.arange(c - 1, device=heatmaps.device)
    heat = _bilinear(heatmaps, gx, gy, channels)
    if heatmaps_flip is None:
        return heat
    if flip_index is None:
        raise ValueError("sample_heat: heatmaps_flip given without flip_index")
    flipped = _bilinear(heatmaps_flip, (w - 1) - gx, gy, flip_index)
    return (heat + flipped) / 2.0


def _bilinear(maps: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Channel ``channels[k]`` of ``maps [B, C, h, w]`` at map coordinates ``gx, gy [B, N, K]``.

    Returns ``[B, N, K]``; reads straight from the flat maps (no channel copies).
    """
    b, _, h, w = maps.shape
    x0, y0 = gx.floor().long(), gy.floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    ax, ay = gx - x0, gy - y0
    flat = maps.reshape(b, -1)
    base = channels.view(1, 1, -1) * (h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, (base + yy * w + xx).flatten(1)).view_as(gx)

    top = (1 - ax) * at(y0, x0) + ax * at(y0, x1)
    bottom = (1 - ax) * at(y1, x0) + ax * at(y1, x1)
    return (1 - ay) * top + ay * bottom


def decode(outputs: Sequence[ScaleOutput], spec: KeypointSpec, cfg: DecodeConfig | None = None) -> DecodedPoses:
    """Decode one batch of network outputs (one :class:`ScaleOutput` per test scale).

    Scales must include factor 1.0 (the reference normalises the others' centre scores to it).
    All tensors of a scale share a device; everything stays on it.
    """
    cfg = cfg or DecodeConfig()
    if not outputs:
        raise ValueError("decode: no outputs given")
    outputs = sorted(outputs, key=lambda o: -o.factor)
    factors = [o.factor for o in outputs]
    if 1.0 not in factors:
        raise ValueError(f"decode: test scales {factors} must include 1.0 (the reference scale)")
    k = spec.num_keypoints
    for o in outputs:
        if o.heatmaps.shape[1] != k + 1 or o.offsets.shape[1] != 2 * k:
            raise ValueError(
                f"decode: outputs have {o.heatmaps.shape[1]} heatmap / {o.offsets.shape[1]} offset channels, "
                f"expected {k + 1} / {2 * k} for the '{spec.name}' layout ({k} keypoints); check the "
                "model's num_keypoints against the data config's keypoints"
            )
    device = outputs[0].heatmaps.device
    flip_heat = torch.as_tensor(spec.flip_index(with_center=True), device=device)
    flip_kpt = torch.as_tensor(spec.flip_index(), device=device)

    poses, ctr, valid = [], [], []
    for o in outputs:
        center = o.heatmaps[:, k].float()
        if o.heatmaps_flip is not None:
            center = (center + o.heatmaps_flip[:, k].float().flip(-1)) / 2.0
        h, w = center.shape[-2:]
        score, index, ok = find_centers(center, cfg.max_people, cfg.center_threshold,
                                        pool_kernel(h, w, cfg.pool_thresholds))
        off_f = None if o.offsets_flip is None else o.offsets_flip.float()
        pose = regress_poses(o.offsets.float(), index, off_f, flip_kpt) * (cfg.stride / o.factor)
        poses.append(pose)
        ctr.append(score)
        valid.append(ok)

    ref = factors.index(1.0)
    best_ref = torch.where(valid[ref], ctr[ref], -torch.inf).amax(1)
    best_ref = torch.where(valid[ref].any(1), best_ref, torch.ones_like(best_ref))
    for i in range(len(outputs)):
        if i != ref:
            best = torch.where(valid[i], ctr[i], -torch.inf).amax(1)
            best = torch.where(valid[i].any(1), best, torch.ones_like(best))
            ctr[i] = ctr[i] / best[:, None] * best_ref[:, None] * cfg.scale_decrease

    pose_all = torch.cat(poses, 1)  # [B, N, K, 2]
    ctr_all = torch.cat(ctr, 1)
    valid_all = torch.cat(valid, 1)
    floor = cfg.joint_score == "floor"
    heat = sum(sample_heat(o.heatmaps.float(), pose_all, cfg.stride / o.factor, floor,
                           None if o.heatmaps_flip is None else o.heatmaps_flip.float(), flip_kpt)
               for o in outputs) / len(outputs)
    joint_scores = ctr_all[..., None] * heat
    heat_score = heat.sum(-1) / k

    keep, rank = pose_nms(pose_all, heat_score, valid_all, cfg.nms_distance, cfg.nms_min_joints,
                          cfg.nms_symmetric, cfg.nms_group_rule)
    n = pose_all.shape[1]
    p = min(cfg.max_people, n)
    by_rank = rank.argsort(dim=1, stable=True)[:, :p]
    by_heat = torch.where(keep, heat_score, -torch.inf).topk(p, dim=1).indices
    n_keep = keep.sum(1)
    pick = torch.where((n_keep > p)[:, None], by_heat, by_rank)  # [B, P]

    out = torch.cat((pose_all, joint_scores[..., None]), -1)
    out = out.gather(1, pick[:, :, None, None].expand(-1, -1, k, 3))
    slot_ok = torch.arange(p, device=device)[None] < n_keep.clamp(max=p)[:, None]
    out = torch.where(slot_ok[:, :, None, None], out, torch.zeros_like(out))
    scores = torch.where(slot_ok, out[..., 2].mean(-1), torch.zeros_like(out[..., 0, 0]))
    decoded = DecodedPoses(poses=out, scores=scores, valid=slot_ok)
    if cfg.match_heatmap:
        from dekr.inference.match import match_to_heatmaps

        fused = [o.heatmaps.float() if o.heatmaps_flip is None else
                 fuse_flip_heatmaps(o.heatmaps.float(), o.heatmaps_flip.float(), flip_heat) for o in outputs]
        decoded.poses = match_to_heatmaps(decoded, fused, factors, cfg)
    return decoded


__all__ = [
    "DecodeConfig", "DecodedPoses", "ScaleOutput", "decode", "find_centers", "fuse_flip_heatmaps",
    "max_filter", "pool_kernel", "regress_poses", "sample_heat",
]
