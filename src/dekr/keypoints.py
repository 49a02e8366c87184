"""Keypoint metadata: the one object that says what a dataset's keypoints are.

Every stage of the pipeline (targets, flip augmentation, flip test, rescoring features,
metrics, drawing) takes a :class:`KeypointSpec` instead of assuming COCO's 17 joints.

Conventions
-----------
* Keypoints are indexed ``0..K-1``; the person centre is channel ``K`` of the heatmaps.
* ``flip_pairs`` lists ``(left, right)`` index pairs; :meth:`KeypointSpec.flip_index` turns
  them into a permutation of length ``K`` (and ``K + 1`` with the centre).
* ``skeleton`` lists directed limbs ``(a, b)``; rescoring features use ``kpt[a] - kpt[b]`` in
  this order, so the built-in orders match the published rescoring weights.
* ``torso_limbs`` are indices into ``skeleton`` whose mean length normalises the rescoring
  features (COCO/CrowdPose: limbs 9 and 11).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class KeypointSpec:
    """Names, symmetry, OKS sigmas, skeleton and colours of one keypoint layout.

    Attributes:
        name: short dataset name (``"coco"``, ``"crowdpose"``, ...).
        names: keypoint names, length K.
        flip_pairs: ``(left, right)`` index pairs swapped by a horizontal flip. Empty means the
            layout has no symmetry: flip augmentation and flip test are then disabled.
        sigmas: per-keypoint OKS sigmas, length K.
        skeleton: directed limbs ``(a, b)`` for drawing and rescoring features.
        torso_limbs: indices into ``skeleton`` used to normalise rescoring features.
        colors: RGB colour per keypoint, length K (generated when omitted).
        center_sigma: Gaussian sigma (output px) of the person-centre heatmap.
    """

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    torso_limbs: tuple[int, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = field(default=())
    center_sigma: float = 4.0

    def __post_init__(self) -> None:
        k = len(self.names)
        if k == 0:
            raise ValueError(f"keypoint spec '{self.name}': 'names' is empty; list the keypoint names")
        if self.sigmas and len(self.sigmas) != k:
            raise ValueError(
                f"keypoint spec '{self.name}': {len(self.sigmas)} OKS sigmas for {k} keypoints; "
                "give one sigma per keypoint"
            )
        if not self.sigmas:
            object.__setattr__(self, "sigmas", (0.05,) * k)
        for pair in (*self.flip_pairs, *self.skeleton):
            if len(pair) != 2 or not all(0 <= int(i) < k for i in pair):
                one_based = all(1 <= int(i) <= k for p in (*self.flip_pairs, *self.skeleton) for i in p)
                raise ValueError(
                    f"keypoint spec '{self.name}': pair {tuple(pair)} is not two indices in [0, {k})"
                    + (
                        "; the pairs look 1-based (as a COCO file's skeleton): subtract 1 from every index"
                        if one_based
                        else ""
                    )
                )
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            if a == b or a in seen or b in seen:
                raise ValueError(
                    f"keypoint spec '{self.name}': flip pair ({a}, {b}) repeats a keypoint; "
                    "each keypoint may appear in at most one pair"
                )
            seen.update((a, b))
        for i in self.torso_limbs:
            if not 0 <= i < len(self.skeleton):
                raise ValueError(
                    f"keypoint spec '{self.name}': torso limb {i} is not an index into the "
                    f"{len(self.skeleton)}-limb skeleton"
                )
        if self.colors and len(self.colors) != k:
            raise ValueError(f"keypoint spec '{self.name}': {len(self.colors)} colours for {k} keypoints")
        if not self.colors:
            object.__setattr__(self, "colors", _default_colors(k))

    @property
    def num_keypoints(self) -> int:
        """K, the number of keypoints (the centre not included)."""
        return len(self.names)

    @property
    def can_flip(self) -> bool:
        """True when the layout declares left/right pairs (flip augmentation and flip test)."""
        return len(self.flip_pairs) > 0

    def flip_index(self, with_center: bool = False) -> np.ndarray:
        """Permutation applied to keypoint channels after a horizontal flip.

        Returns:
            int64 array of length K (or K + 1 with the centre, which maps to itself).
        """
        k = self.num_keypoints
        perm = np.arange(k + int(with_center), dtype=np.int64)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def sigmas_array(self) -> np.ndarray:
        """OKS sigmas as float64 array ``[K]``."""
        return np.asarray(self.sigmas, dtype=np.float64)

    @classmethod
    def from_dict(cls, cfg: Mapping) -> KeypointSpec:
        """Build from a plain mapping (a Hydra/OmegaConf node or a dict).

        ``builtin: coco`` (or ``crowdpose``) returns the built-in spec; otherwise the fields of
        this class are read, lists being converted to tuples.
        """
        cfg = dict(cfg)
        builtin = cfg.pop("builtin", None)
        if builtin is not None:
            spec = get_keypoint_spec(str(builtin))
            return spec if not cfg else _replace(spec, cfg)
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"keypoint spec: unknown field(s) {sorted(unknown)}; "
                f"allowed: {sorted(cls.__dataclass_fields__)} or 'builtin'"
            )
        return cls(**_tuplify(cfg))


def _tuplify(cfg: Mapping) -> dict:
    out = {}
    for key, value in cfg.items():
        if key in ("names", "sigmas", "torso_limbs"):
            value = tuple(value)
        elif key in ("flip_pairs", "skeleton", "colors"):
            value = tuple(tuple(int(v) for v in item) for item in value)
        out[key] = value
    return out


def _replace(spec: KeypointSpec, overrides: Mapping) -> KeypointSpec:
    fields = {name: getattr(spec, name) for name in spec.__dataclass_fields__}
    fields.update(_tuplify(overrides))
    return KeypointSpec(**fields)


def _default_colors(k: int) -> tuple[tuple[int, int, int], ...]:
    """K distinct RGB colours spread around the hue circle."""
    import colorsys

    return tuple(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(k, 1), 0.85, 1.0)) for i in range(k))


COCO = KeypointSpec(
    name="coco",
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    sigmas=(
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ),
    skeleton=(
        (0, 1),
        (0, 2),
        (1, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
        (5, 6),
        (5, 7),
        (5, 11),
        (6, 8),
        (6, 12),
        (7, 9),
        (8, 10),
        (11, 12),
        (11, 13),
        (12, 14),
        (13, 15),
        (14, 16),
    ),
    torso_limbs=(9, 11),
    colors=(
        (255, 0, 0),
        (255, 85, 0),
        (255, 170, 0),
        (255, 255, 0),
        (170, 255, 0),
        (85, 255, 0),
        (0, 255, 0),
        (0, 255, 85),
        (0, 255, 170),
        (0, 255, 255),
        (0, 170, 255),
        (0, 85, 255),
        (0, 0, 255),
        (85, 0, 255),
        (170, 0, 255),
        (255, 0, 255),
        (255, 0, 170),
    ),
    center_sigma=4.0,
)

CROWDPOSE = KeypointSpec(
    name="crowdpose",
    names=(
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
        "head",
        "neck",
    ),
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    sigmas=(0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079),
    skeleton=(
        (12, 13),
        (13, 0),
        (13, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (0, 6),
        (1, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (9, 11),
        (6, 7),
        (0, 1),
    ),
    torso_limbs=(9, 11),
    # The reference draws the CrowdPose centre with the joint sigma (2), see dekr.codec.encode.
    center_sigma=2.0,
)

_BUILTIN: dict[str, KeypointSpec] = {"coco": COCO, "crowdpose": CROWDPOSE}


def get_keypoint_spec(name: str) -> KeypointSpec:
    """Return a built-in spec by name (``"coco"`` or ``"crowdpose"``)."""
    try:
        return _BUILTIN[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown built-in keypoint layout '{name}'; built-ins are {sorted(_BUILTIN)}. "
            "For a custom dataset declare names/flip_pairs/sigmas/skeleton in its data config."
        ) from None


def check_num_keypoints(found: int, spec: KeypointSpec, origin: str) -> None:
    """The one keypoint-count check: ``origin`` (a network, checkpoint or file) must predict the layout's
    ``K``, else a ``ValueError`` naming both and the fix."""
    if int(found) != spec.num_keypoints:
        raise ValueError(
            f"{origin} has {int(found)} keypoints but the keypoint layout '{spec.name}' has "
            f"{spec.num_keypoints}; choose the data=... config the network was trained with (its "
            "`keypoints` block), or a checkpoint trained on this layout"
        )


def build_keypoint_spec(cfg: Mapping | KeypointSpec | str) -> KeypointSpec:
    """Accept a spec, a built-in name or a mapping (see :meth:`KeypointSpec.from_dict`)."""
    if isinstance(cfg, KeypointSpec):
        return cfg
    if isinstance(cfg, str):
        return get_keypoint_spec(cfg)
    return KeypointSpec.from_dict(cfg)


__all__ = ["COCO", "CROWDPOSE", "KeypointSpec", "build_keypoint_spec", "check_num_keypoints", "get_keypoint_spec"]
