"""Pose non-maximum suppression, vectorized over the batch and the candidates.

Two poses are duplicates when more than ``min_joints`` of their joints lie closer than
``distance * sqrt(w² + h²)``, ``(w, h)`` being the extent of a pose's joints.

Strategies (``CodecConfig.nms.strategy``):

* ``reference`` (default): the threshold of pair ``(i, j)`` uses the extent of pose ``i`` only
  (asymmetric), candidates are visited in order; visiting ``i`` forms the group ``{j : dup(i, j)}``
  and keeps its member with the best heat score, unless that member was already suppressed, in which
  case nothing is kept and the group is *not* suppressed.
* ``symmetric``: the same group rule, the threshold from the larger extent of the two poses.
* ``greedy``: classic NMS, candidates visited by decreasing heat score, each one kept unless a kept
  pose marks it as duplicate (first pose's extent, as ``reference``).

Both visits are sequential by nature; they are solved here as the unique fixed point of a lower-
triangular boolean system (``kept[t]`` depends only on ``kept[:t]``), iterated with batched matrix
products until it stops changing (typically 2-4 iterations, at most N).
"""

from __future__ import annotations

import torch

from dekr.codec.config import NMS_STRATEGIES


def duplicate_matrix(
    poses: torch.Tensor, valid: torch.Tensor, distance: float, min_joints: int, symmetric: bool = False
) -> torch.Tensor:
    """``dup[b, i, j]``: pose j duplicates pose i.

    Args:
        poses: float ``[B, N, K, 2]`` joint positions (any frame; input px in the decoder).
        valid: bool ``[B, N]`` real candidates (padding is never a duplicate of anything).
        distance: threshold as a fraction of the pose extent ``sqrt(w² + h²)``.
        min_joints: pairs with more than this many close joints are duplicates.
        symmetric: use the larger extent of the two poses instead of that of pose i.

    Returns:
        bool ``[B, N, N]``; the diagonal equals ``valid``.
    """
    extent = poses.amax(dim=2) - poses.amin(dim=2)  # [B, N, 2]
    area = (extent * extent).sum(-1)  # [B, N]
    if symmetric:
        area_ij = torch.maximum(area[:, :, None], area[:, None, :])
    else:
        area_ij = area[:, :, None].expand(-1, -1, area.shape[1])
    thr = distance * torch.sqrt(area_ij)  # [B, N, N]
    diff = poses[:, :, None] - poses[:, None, :]  # [B, N, N, K, 2]
    dist = torch.sqrt((diff * diff).sum(-1))  # [B, N, N, K]
    close = (dist < thr[..., None]).sum(-1)  # [B, N, N]
    dup = (close > min_joints) & valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(dup.shape[1], dtype=torch.bool, device=dup.device)
    return torch.where(eye, valid[:, :, None], dup)


def _solve_visits(dup: torch.Tensor, best: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Which visits keep a pose, for visits in index order.

    Visit t keeps pose ``best[t]`` iff neither t nor ``best[t]`` is in the group of an earlier
    keeping visit; a keeping visit then marks its whole group ``dup[t]`` as suppressed.

    Returns:
        bool ``[B, N]``, True where visit t keeps ``best[t]``.
    """
    n = dup.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=dup.device).tril(-1)  # [t, i]: i < t
    groups = dup.float()
    kept = valid.clone()
    for _ in range(n + 1):
        suppressed = torch.bmm((earlier & kept[:, None, :]).float(), groups) > 0  # [B, t, j]
        self_sup = suppressed.diagonal(dim1=1, dim2=2)
        best_sup = suppressed.gather(2, best[:, :, None]).squeeze(2)
        new = valid & ~self_sup & ~best_sup
        if torch.equal(new, kept):
            break
        kept = new
    return kept


def pose_nms(
    poses: torch.Tensor,
    heat_score: torch.Tensor,
    valid: torch.Tensor,
    distance: float,
    min_joints: int,
    strategy: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Suppress duplicate poses.

    Args:
        poses: float ``[B, N, K, 2]`` candidate joints, candidates in visiting order.
        heat_score: float ``[B, N]`` mean keypoint heat of each candidate (ranks group members).
        valid: bool ``[B, N]`` real candidates.
        distance, min_joints: see :func:`duplicate_matrix`.
        strategy: ``reference``, ``symmetric`` or ``greedy`` (module docstring).

    Returns:
        ``keep`` bool ``[B, N]`` (kept candidates) and ``rank`` long ``[B, N]``: the visit at which a
        kept candidate was kept (output order of the reference), ``N`` for the others.
    """
    if strategy not in NMS_STRATEGIES:
        raise ValueError(f"nms.strategy must be one of {list(NMS_STRATEGIES)}, got {strategy!r}")
    symmetric = strategy == "symmetric"
    b, n = valid.shape
    if n == 0:
        return valid.clone(), torch.zeros_like(valid, dtype=torch.long)
    if strategy != "greedy":
        dup = duplicate_matrix(poses, valid, distance, min_joints, symmetric)
        masked = torch.where(dup, heat_score[:, None, :], torch.full_like(dup, -torch.inf, dtype=heat_score.dtype))
        best = masked.argmax(dim=2)  # first maximum, like the reference
        visit_keeps = _solve_visits(dup, best, valid)
        target = torch.where(visit_keeps, best, torch.full_like(best, n))
    else:
        order = torch.where(valid, heat_score, -torch.inf).argsort(dim=1, descending=True, stable=True)
        sorted_poses = poses.gather(1, order[:, :, None, None].expand_as(poses))
        sorted_valid = valid.gather(1, order)
        dup = duplicate_matrix(sorted_poses, sorted_valid, distance, min_joints, symmetric)
        ident = torch.arange(n, device=poses.device).expand(b, n)
        visit_keeps = _solve_visits(dup, ident, sorted_valid)
        target = torch.where(visit_keeps, order, torch.full_like(order, n))
    steps = torch.arange(n, device=poses.device).expand(b, n)
    rank = torch.full((b, n + 1), n, dtype=torch.long, device=poses.device)
    rank.scatter_(1, target, steps)
    rank = rank[:, :n]
    return rank < n, rank


__all__ = ["duplicate_matrix", "pose_nms"]
