"""The codec's settings: one frozen object, read from the ``codec`` config group.

``conf/codec/default.yaml`` is the only place that gives these numbers values: the dataclasses
below define the fields and their checks, :func:`default_codec_config` reads the file, and
:meth:`CodecConfig.from_mapping` builds the object from a composed Hydra node or from what a
checkpoint stores (plain data; unknown keys, wrong types and missing keys are refused).

Layout-dependent values are derived from the layout where the file leaves them ``null``: the NMS
joint count defaults to ``floor(K / 2)`` (:meth:`NMSConfig.joints_for`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dekr.config import read_group_default
from dekr.plaindata import build_dataclass, merge, plain

log = logging.getLogger(__name__)

NMSStrategy = Literal["reference", "greedy", "symmetric"]
NMS_STRATEGIES = typing.get_args(NMSStrategy)


@dataclass(frozen=True)
class InputConfig:
    """Network input normalisation: ``(rgb / 255 - mean) / std`` per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class TargetConfig:
    """Training-target encoding (see :mod:`dekr.codec.encode`)."""

    sigma: float
    radius: int
    bg_weight: float
    window: Literal["reference", "symmetric"]
    area_mode: Literal["reference", "box"]
    fix_zero_keypoint_center: bool
    exact_heatmaps: bool


@dataclass(frozen=True)
class CenterConfig:
    """Decoding stage 1, centre peaks: ``max_people`` candidates per scale above ``threshold``;
    max-pool kernel 7 if the map size ``(h + w) / 2 > pool_thresholds[0]``, 5 if ``> [1]``, else 3."""

    max_people: int
    threshold: float
    pool_thresholds: tuple[float, float]


@dataclass(frozen=True)
class ScoringConfig:
    """Decoding stage 3, scores: ``joint_score`` ``floor`` (reference) or ``bilinear``; centre scores of
    scales other than 1 are rescaled to the best scale-1 score times ``scale_decrease``."""

    joint_score: Literal["floor", "bilinear"]
    scale_decrease: float


@dataclass(frozen=True)
class NMSConfig:
    """Decoding stage 4, pose NMS (see :mod:`dekr.codec.nms`).

    ``strategy``: ``reference`` (the official group rule, threshold from the first pose's extent),
    ``greedy`` (classic NMS by heat score) or ``symmetric`` (the group rule with the larger extent of
    the two poses). Two poses are duplicates when more than ``min_joints`` of their joints lie closer
    than ``distance * sqrt(w^2 + h^2)``; ``min_joints=None`` means ``floor(K / 2)``.
    """

    strategy: NMSStrategy
    distance: float
    min_joints: int | None

    def joints_for(self, num_keypoints: int) -> int:
        """The duplicate threshold for a ``K``-keypoint layout (``floor(K / 2)`` unless set)."""
        return num_keypoints // 2 if self.min_joints is None else int(self.min_joints)


@dataclass(frozen=True)
class RefineConfig:
    """Decoding stage 5 (optional), heatmap matching (see :mod:`dekr.codec.refine`)."""

    enabled: bool
    max_distance: float
    peak_kernel: int
    adjust_threshold: float
    adjust_window: int


@dataclass(frozen=True)
class CodecConfig:
    """Every setting of DEKR's representation: stride, input normalisation, targets and decoding."""

    stride: int
    input: InputConfig
    targets: TargetConfig
    centers: CenterConfig
    scoring: ScoringConfig
    nms: NMSConfig
    refine: RefineConfig

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any], origin: str = "codec config") -> CodecConfig:
        """Build from plain data (a composed ``codec`` node or a checkpoint's stored copy)."""
        return build_dataclass(cls, plain(node), origin)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings): what checkpoints and run files store."""
        return plain(dataclasses.asdict(self))

    def replace(self, **sections: Mapping[str, Any] | Any) -> CodecConfig:
        """A copy with some values changed: ``cfg.replace(nms={"strategy": "greedy"}, stride=4)``."""
        return codec_config(sections, base=self)


def default_codec_config() -> CodecConfig:
    """The codec group's defaults (``conf/codec/default.yaml``)."""
    return _load_default()


def codec_config(overrides: Mapping[str, Any] | None = None, base: CodecConfig | None = None) -> CodecConfig:
    """``base`` (default: :func:`default_codec_config`) with nested ``overrides`` merged in, e.g.
    ``codec_config({"refine": {"enabled": True}})``."""
    merged = merge((base or default_codec_config()).to_dict(), plain(overrides or {}), "codec")
    return CodecConfig.from_mapping(merged)


# ---------------------------------------------------------------------------------------------- checks
def _check(cfg: CodecConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"codec config: {message}")

    need(cfg.stride >= 1, f"stride must be a positive integer, got {cfg.stride}")
    need(len(cfg.input.mean) == 3 and len(cfg.input.std) == 3, "input.mean and input.std need 3 values (RGB)")
    need(all(s > 0 for s in cfg.input.std), f"input.std must be positive, got {cfg.input.std}")
    need(cfg.targets.radius >= 1, f"targets.radius must be >= 1 output px, got {cfg.targets.radius}")
    need(cfg.targets.bg_weight >= 0, f"targets.bg_weight must be >= 0, got {cfg.targets.bg_weight}")
    need(cfg.centers.max_people >= 1, f"centers.max_people must be >= 1, got {cfg.centers.max_people}")
    need(cfg.nms.distance >= 0, f"nms.distance must be >= 0, got {cfg.nms.distance}")
    need(cfg.nms.min_joints is None or cfg.nms.min_joints >= 0, "nms.min_joints must be >= 0 or null")
    need(cfg.refine.peak_kernel % 2 == 1, f"refine.peak_kernel must be odd, got {cfg.refine.peak_kernel}")


@functools.lru_cache(maxsize=1)
def _load_default() -> CodecConfig:
    node, origin = read_group_default("codec")
    return CodecConfig.from_mapping(node, origin=origin)


__all__ = [
    "NMS_STRATEGIES",
    "CenterConfig",
    "CodecConfig",
    "InputConfig",
    "NMSConfig",
    "RefineConfig",
    "ScoringConfig",
    "TargetConfig",
    "codec_config",
    "default_codec_config",
]
