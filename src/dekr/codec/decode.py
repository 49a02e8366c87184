"""From DEKR network outputs to poses, in five named stages.

1. :func:`find_centers`: centre-heatmap peaks (``CodecConfig.centers``);
2. :func:`regress_poses`: ``location - offset`` at each peak (flip pass fused);
3. :func:`score_poses`: joint scores from the keypoint heatmaps, multi-scale centre rescaling
   (``CodecConfig.scoring``);
4. :func:`select_poses`: pose NMS (:mod:`dekr.codec.nms`, ``CodecConfig.nms``) and the kept slots;
5. optional :func:`dekr.codec.refine.refine_poses`: snap joints to heatmap peaks (``CodecConfig.refine``).

:func:`decode` runs them in order.

Shapes: ``B`` images, ``K`` keypoints (``spec.num_keypoints``), ``h x w`` output map of one scale,
``N`` candidates (``max_people`` per scale), ``P`` output slots (``max_people``).

Outputs of one scale (:class:`ScaleOutput`) are raw network outputs: ``heatmaps [B, K+1, h, w]``
(channel K is the person centre) and ``offsets [B, 2K, h, w]`` (``pixel - keypoint``, interleaved
``x0, y0, x1, ...``, output px). For flip testing, ``heatmaps_flip``/``offsets_flip`` are the outputs
for the horizontally flipped input shifted left by ``stride - 1`` pixels (see
:func:`dekr.codec.geometry.flip_input`), which makes output column ``j`` of the flipped pass
exactly the mirror ``w - 1 - j`` of the plain pass.

Decoded poses are in *input pixels of the factor-1 geometry* (output px × stride / factor); map them
to the original image with :func:`dekr.codec.geometry.input_to_original`.

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
* options: ``scoring.joint_score=bilinear``, ``nms.strategy=greedy|symmetric``, and the vectorized
  heatmap matching of :mod:`dekr.codec.refine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dekr.codec.config import CenterConfig, CodecConfig, ScoringConfig, default_codec_config
from dekr.codec.maps import bilinear, fuse_flip_heatmaps, map_coordinate, max_filter, pool_kernel
from dekr.codec.nms import pose_nms
from dekr.codec.refine import refine_poses
from dekr.keypoints import KeypointSpec


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


# ------------------------------------------------------------------------------ 1. centres
def find_centers(center_map: torch.Tensor, cfg: CenterConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local maxima of the centre heatmap ``[B, h, w]``.

    Returns:
        ``scores`` float ``[B, N]`` (descending), ``index`` long ``[B, N]`` flat ``y * w + x``,
        ``valid`` bool ``[B, N]`` (score above ``cfg.threshold``), ``N = min(max_people, h * w)``.
    """
    h, w = center_map.shape[-2:]
    pooled = max_filter(center_map, pool_kernel(h, w, cfg.pool_thresholds))
    peaks = center_map * (pooled == center_map)
    n = min(cfg.max_people, h * w)
    scores, index = peaks.flatten(1).topk(n, dim=1)
    return scores, index, scores > cfg.threshold


# ------------------------------------------------------------------------------ 2. regression
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


# ------------------------------------------------------------------------------ 3. scores
def sample_heat(
    heatmaps: torch.Tensor,
    poses: torch.Tensor,
    ratio: float,
    floor: bool = True,
    heatmaps_flip: torch.Tensor | None = None,
    flip_index: torch.Tensor | None = None,
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
    gx = map_coordinate(poses[..., 0], w, ratio, floor).clamp(0, w - 1)
    gy = map_coordinate(poses[..., 1], h, ratio, floor).clamp(0, h - 1)
    channels = torch.arange(c - 1, device=heatmaps.device)
    heat = bilinear(heatmaps, gx, gy, channels)
    if heatmaps_flip is None:
        return heat
    if flip_index is None:
        raise ValueError("sample_heat: heatmaps_flip given without flip_index")
    flipped = bilinear(heatmaps_flip, (w - 1) - gx, gy, flip_index)
    return (heat + flipped) / 2.0


def rescale_center_scores(
    scores: list[torch.Tensor], valid: list[torch.Tensor], ref: int, decrease: float
) -> list[torch.Tensor]:
    """Centre scores of the other scales rescaled so that their best equals the best of scale ``ref``
    (factor 1) times ``decrease`` (the reference's multi-scale rule)."""

    def best(i: int) -> torch.Tensor:
        top = torch.where(valid[i], scores[i], -torch.inf).amax(1)
        return torch.where(valid[i].any(1), top, torch.ones_like(top))

    best_ref = best(ref)
    return [s if i == ref else s / best(i)[:, None] * best_ref[:, None] * decrease for i, s in enumerate(scores)]


def score_poses(
    outputs: Sequence[ScaleOutput],
    poses: torch.Tensor,
    center_scores: torch.Tensor,
    flip_index: torch.Tensor,
    stride: int,
    cfg: ScoringConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint scores ``[B, N, K]`` (centre score x keypoint heat averaged over scales) and the mean
    keypoint heat of each candidate ``[B, N]`` (what pose NMS ranks by)."""
    floor = cfg.joint_score == "floor"
    heat = sum(
        sample_heat(
            o.heatmaps.float(),
            poses,
            stride / o.factor,
            floor,
            None if o.heatmaps_flip is None else o.heatmaps_flip.float(),
            flip_index,
        )
        for o in outputs
    ) / len(outputs)
    return center_scores[..., None] * heat, heat.sum(-1) / poses.shape[2]


# ------------------------------------------------------------------------------ 4. selection
def select_poses(
    poses: torch.Tensor,
    joint_scores: torch.Tensor,
    heat_score: torch.Tensor,
    valid: torch.Tensor,
    cfg: CodecConfig,
    num_keypoints: int,
) -> DecodedPoses:
    """Pose NMS, then at most ``max_people`` poses per image in the reference's output order
    (by heat score when more survive)."""
    k = num_keypoints
    keep, rank = pose_nms(poses, heat_score, valid, cfg.nms.distance, cfg.nms.joints_for(k), cfg.nms.strategy)
    n = poses.shape[1]
    p = min(cfg.centers.max_people, n)
    by_rank = rank.argsort(dim=1, stable=True)[:, :p]
    by_heat = torch.where(keep, heat_score, -torch.inf).topk(p, dim=1).indices
    n_keep = keep.sum(1)
    pick = torch.where((n_keep > p)[:, None], by_heat, by_rank)  # [B, P]
    out = torch.cat((poses, joint_scores[..., None]), -1)
    out = out.gather(1, pick[:, :, None, None].expand(-1, -1, k, 3))
    slot_ok = torch.arange(p, device=poses.device)[None] < n_keep.clamp(max=p)[:, None]
    out = torch.where(slot_ok[:, :, None, None], out, torch.zeros_like(out))
    scores = torch.where(slot_ok, out[..., 2].mean(-1), torch.zeros_like(out[..., 0, 0]))
    return DecodedPoses(poses=out, scores=scores, valid=slot_ok)


# ------------------------------------------------------------------------------ all stages
def decode(outputs: Sequence[ScaleOutput], spec: KeypointSpec, cfg: CodecConfig | None = None) -> DecodedPoses:
    """Decode one batch of network outputs (one :class:`ScaleOutput` per test scale).

    Scales must include factor 1.0 (the reference normalises the others' centre scores to it).
    All tensors of a scale share a device; everything stays on it. ``cfg``: the codec settings
    (``None``: the codec group's defaults).
    """
    cfg = cfg or default_codec_config()
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
    flip_kpt = torch.as_tensor(spec.flip_index(), device=device)

    poses, ctr, valid = [], [], []
    for o in outputs:
        center = o.heatmaps[:, k].float()
        if o.heatmaps_flip is not None:
            center = (center + o.heatmaps_flip[:, k].float().flip(-1)) / 2.0
        score, index, ok = find_centers(center, cfg.centers)
        off_f = None if o.offsets_flip is None else o.offsets_flip.float()
        poses.append(regress_poses(o.offsets.float(), index, off_f, flip_kpt) * (cfg.stride / o.factor))
        ctr.append(score)
        valid.append(ok)
    ctr = rescale_center_scores(ctr, valid, factors.index(1.0), cfg.scoring.scale_decrease)

    pose_all = torch.cat(poses, 1)  # [B, N, K, 2]
    joint_scores, heat_score = score_poses(outputs, pose_all, torch.cat(ctr, 1), flip_kpt, cfg.stride, cfg.scoring)
    decoded = select_poses(pose_all, joint_scores, heat_score, torch.cat(valid, 1), cfg, k)
    if cfg.refine.enabled:
        flip_heat = torch.as_tensor(spec.flip_index(with_center=True), device=device)
        fused = [
            o.heatmaps.float()
            if o.heatmaps_flip is None
            else fuse_flip_heatmaps(o.heatmaps.float(), o.heatmaps_flip.float(), flip_heat)
            for o in outputs
        ]
        decoded.poses = refine_poses(
            decoded.poses, decoded.valid, fused, factors, cfg.stride, cfg.refine, cfg.centers.max_people
        )
    return decoded


__all__ = [
    "DecodedPoses",
    "ScaleOutput",
    "decode",
    "find_centers",
    "regress_poses",
    "rescale_center_scores",
    "sample_heat",
    "score_poses",
    "select_poses",
]
