"""DEKR's representation: people ↔ training targets ↔ network outputs ↔ poses, in one package.

* :mod:`~dekr.codec.config`: :class:`CodecConfig`, the one settings object (``conf/codec/``);
* :mod:`~dekr.codec.encode`: people (output px) → heatmaps + per-pixel offsets (training targets);
* :mod:`~dekr.codec.decode`: network outputs → poses, in named stages (centres → regress → score →
  pose NMS (:mod:`~dekr.codec.nms`) → optional refinement (:mod:`~dekr.codec.refine`));
* :mod:`~dekr.codec.geometry`: the test-time input geometry (original px ↔ input px) and flip input;
* :mod:`~dekr.codec.maps`: peak pooling and the upsampling geometry shared by the decoding stages;
* :mod:`~dekr.codec.synthetic`: outputs without a network (ground truth encoded at the test geometry,
  fabricated scenes) for round-trip tests and benchmarks.

:class:`Codec` ties them to one layout: ``Codec(spec).encoder(size)`` and ``Codec(spec).decode(outputs)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from dekr.codec.config import CodecConfig, codec_config, default_codec_config
from dekr.codec.decode import DecodedPoses, ScaleOutput, decode
from dekr.codec.encode import COCO_MIN_CENTER_AREA, TargetEncoder
from dekr.keypoints import KeypointSpec

log = logging.getLogger(__name__)


class Codec:
    """DEKR's encode and decode for one keypoint layout, with one :class:`CodecConfig`.

    Args:
        spec: the keypoint layout (``K``, flip pairs, centre sigma).
        cfg: codec settings; ``None``: the codec group's defaults (``conf/codec/default.yaml``).

    Raises:
        ValueError: when ``cfg.nms.min_joints >= K`` (no pair of poses could ever be a duplicate).
    """

    def __init__(self, spec: KeypointSpec, cfg: CodecConfig | None = None) -> None:
        self.spec = spec
        self.cfg = cfg or default_codec_config()
        k = spec.num_keypoints
        joints = self.cfg.nms.joints_for(k)
        if joints >= k:
            raise ValueError(
                f"codec config: nms.min_joints={joints} can never suppress a duplicate for the "
                f"'{spec.name}' layout ({k} keypoints: a duplicate needs more than {joints} close joints); "
                f"set codec.nms.min_joints below {k}, or null for floor(K/2) = {k // 2}"
            )

    @property
    def stride(self) -> int:
        """Input px per output px."""
        return self.cfg.stride

    def encoder(
        self, output_size: int | tuple[int, int], min_center_area: float = COCO_MIN_CENTER_AREA
    ) -> TargetEncoder:
        """The target encoder for an ``output_size`` map (``input size / stride``)."""
        return TargetEncoder(self.spec, output_size, self.cfg.targets, min_center_area=min_center_area)

    def encode(
        self,
        keypoints: np.ndarray,
        ann_areas: np.ndarray | None,
        output_size: int | tuple[int, int],
        min_center_area: float = COCO_MIN_CENTER_AREA,
    ) -> dict[str, np.ndarray]:
        """Compact training targets of one image whose people ``keypoints [P, K, 3]`` are already in
        output px (annotation areas ``[P]`` for the small-person rule); see :mod:`dekr.codec.encode`."""
        enc = self.encoder(output_size, min_center_area)
        centers, areas = enc.centers_and_areas(keypoints, ann_areas)
        return enc.encode(keypoints, centers, areas * self.stride**2)

    def decode(self, outputs: Sequence[ScaleOutput]) -> DecodedPoses:
        """Poses (input px of the factor-1 geometry) from one batch of outputs, one per test scale."""
        return decode(outputs, self.spec, self.cfg)


__all__ = [
    "Codec",
    "CodecConfig",
    "DecodedPoses",
    "ScaleOutput",
    "TargetEncoder",
    "codec_config",
    "decode",
    "default_codec_config",
]
