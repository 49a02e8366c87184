"""Training augmentation (albumentations): the reference's random affine crop and a pair-swapping flip.

Frames: annotations arrive in original image pixels; the transform returns the network input
(``input_size`` square, input pixels) and keypoints/centres in **output pixels** (input / stride,
exactly: output pixel ``j`` is input pixel ``4j``). The loss mask is warped straight to the output
resolution, as the reference does.

Augmentation recipe (the reference's ``RandomAffineTransform`` + ``RandomHorizontalFlip``):

* crop side ``s = short_side * U(min_scale, max_scale)`` around the image centre shifted by
  ``randint(-t, t)`` original pixels per axis with ``t = max_translate * s / 200`` (the
  reference's units: ``max_translate=40`` shifts by up to 20% of the crop, about +-102 input px at
  512), rotation ``U(-max_rotation, max_rotation)`` degrees about the crop centre; the crop is
  resampled to ``input_size`` (bilinear, black border);
* the per-person "area" is multiplied by the squared zoom (input px per original px);
* the loss mask is warped (bilinear on 0/255, threshold 0.5) to the output size; pixels outside
  the source image get weight 0;
* horizontal flip with probability ``flip_prob`` (disabled when the spec has no flip pairs),
  swapping left/right keypoints. ``flip_label_shift="reference"`` reproduces the reference: its
  labels are flipped at output resolution (``w_out - 1 - x``) while the image is flipped at input
  resolution, so flipped labels sit ``stride - 1`` = 3 input px left of the content.
  ``"consistent"`` flips labels exactly with the image (``S - 1 - x`` in input px).
* keypoints that leave the input square become invisible (``v = 0``); centres are kept as they
  are (the encoder decides which ones are in the map, as the reference does);
* ImageNet normalisation, CHW float32.

The parameters follow the reference's distributions but are drawn from albumentations' own
generator (seeded per process, see :class:`TrainTransform`), so individual draws differ from the
reference's ``np.random`` ones; given the same parameters (:meth:`TrainTransform.replay`) the image,
mask, keypoints and targets equal the reference's (tested against stored official samples). With
``flip_label_shift="consistent"`` the loss mask is still flipped at output resolution, i.e. it is
0.75 output px off the image content, as in the reference; it is a coarse mask.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np

from dekr.codec.config import InputConfig, default_codec_config
from dekr.keypoints import KeypointSpec


@functools.lru_cache(maxsize=8)
def _normalize_luts(mean: tuple[float, ...], std: tuple[float, ...]) -> list[np.ndarray]:
    m32, s32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return [
        np.ascontiguousarray(((np.arange(256, dtype=np.float32) / 255.0 - m) / sd).astype(np.float32).reshape(256, 1))
        for m, sd in zip(m32, s32)
    ]


def normalize_image(image: np.ndarray, norm: InputConfig, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB -> float32 ``[3, H, W]`` normalised with the codec's ``norm.mean``/``std``,
    written into ``out`` when given (C-contiguous). One table lookup per channel, straight into the
    CHW planes; the values equal ``(x / 255 - mean) / std`` in float32 (torchvision's ``to_tensor`` +
    ``normalize``)."""
    h, w = image.shape[:2]
    if out is None:
        out = np.empty((3, h, w), dtype=np.float32)
    for c, lut in enumerate(_normalize_luts(tuple(norm.mean), tuple(norm.std))):
        cv2.LUT(cv2.extractChannel(image, c), lut, dst=out[c])
    return out


class RandomAffineCrop(A.DualTransform):
    """The reference's random scale/rotation/translation crop to a square ``input_size`` image.

    Keypoints are ``[N, 2+]`` in pixels (albumentations' ``xy`` layout); masks are warped to
    ``input_size // mask_stride`` (the output resolution).
    """

    def __init__(
        self,
        input_size: int,
        mask_stride: int,
        min_scale: float = 0.75,
        max_scale: float = 1.5,
        max_rotation: float = 30.0,
        max_translate: float = 40.0,
        scale_type: Literal["short", "long"] = "short",
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.input_size = input_size
        self.mask_stride = mask_stride
        self.min_scale, self.max_scale = min_scale, max_scale
        self.max_rotation = max_rotation
        self.max_translate = max_translate
        self.scale_type = scale_type

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = self.random_generator
        scale = (min(h, w) if self.scale_type == "short" else max(h, w)) / 200.0
        scale *= rng.uniform(self.min_scale, self.max_scale)
        rotation = rng.uniform(-self.max_rotation, self.max_rotation)
        center = np.array([w / 2.0, h / 2.0])
        if self.max_translate > 0:
            reach = self.max_translate * scale
            center += rng.integers(int(-reach), int(reach), size=2)
        matrix = crop_matrix(center, scale, self.input_size, rotation)
        return {"matrix": matrix, "zoom": self.input_size / (200 * scale)}

    def apply(self, img: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        return cv2.warpAffine(img, matrix, (self.input_size, self.input_size), flags=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        size = self.input_size // self.mask_stride
        src = (mask > 0).astype(np.uint8) * 255
        warped = cv2.warpAffine(src, matrix / self.mask_stride, (size, size), flags=cv2.INTER_LINEAR)
        return (warped > 127.5).astype(np.float32)

    def apply_to_keypoints(self, keypoints: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        out = keypoints.copy()
        out[:, :2] = keypoints[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("input_size", "mask_stride", "min_scale", "max_scale", "max_rotation", "max_translate", "scale_type")


def crop_matrix(center: np.ndarray, scale: float, size: int, rotation: float = 0.0) -> np.ndarray:
    """``2x3`` matrix: original px -> ``size`` square; ``200 * scale`` px around ``center`` fill it,
    rotated by ``rotation`` degrees (counter-clockwise on screen) about the square's centre."""
    zoom = size / (200.0 * scale)
    mat = np.array(
        [
            [zoom, 0.0, size * (0.5 - center[0] / (200.0 * scale))],
            [0.0, zoom, size * (0.5 - center[1] / (200.0 * scale))],
        ]
    )
    if rotation:
        rad = -np.deg2rad(rotation)
        cs, sn = np.cos(rad), np.sin(rad)
        rot = np.array([[cs, -sn], [sn, cs]])
        half = np.array([size / 2.0, size / 2.0])
        mat = np.concatenate([rot @ mat[:, :2], (rot @ (mat[:, 2] - half) + half)[:, None]], axis=1)
    return mat


class FlipWithPairs(A.DualTransform):
    """Horizontal flip of image, masks and keypoints that also swaps left/right keypoint rows.

    Keypoints must come person-major, ``rows_per_person`` rows each, in the order of ``perm``.
    ``label_shift`` (input px) moves flipped keypoints left: 0 is exact, ``stride - 1``
    reproduces the reference.
    """

    def __init__(self, perm: np.ndarray, label_shift: float = 0.0, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.perm = np.asarray(perm, dtype=np.int64)
        self.label_shift = float(label_shift)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return np.ascontiguousarray(mask[:, ::-1])

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        width = params["shape"][1]
        n = len(self.perm)
        people = len(keypoints) // n
        order = (np.arange(people)[:, None] * n + self.perm).reshape(-1)
        out = keypoints[order].copy()
        out[:, 0] = (width - 1) - out[:, 0] - self.label_shift
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("perm", "label_shift")


@dataclass
class TrainSample:
    """One augmented training sample before target encoding.

    Attributes:
        image: float32 ``[3, S, S]`` ImageNet-normalised.
        mask: float32 ``[S/stride, S/stride]`` loss mask (0 = ignore).
        keypoints: float64 ``[P, K, 3]`` in output px; ``v = 0`` for keypoints outside the input.
        centers: float64 ``[P, 3]`` in output px.
        areas: float64 ``[P]`` areas scaled to input px squared.
    """

    image: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray
    centers: np.ndarray
    areas: np.ndarray


class TrainTransform:
    """Random affine crop + flip + normalisation for bottom-up training (see module docstring).

    Args:
        spec: keypoint layout (flip pairs).
        input_size: side ``S`` of the square network input.
        stride: output stride (the codec's).
        norm: input normalisation (the codec's ``input``); ``None``: the codec group's defaults.
        min_scale, max_scale, max_rotation, max_translate, scale_type: the affine recipe.
        flip_prob: horizontal flip probability (0 when the spec has no flip pairs).
        flip_label_shift: ``"reference"`` (3 px at stride 4) or ``"consistent"`` (0), or a number of
            input px.
        seed: seed of the augmentation RNG; ``None`` draws one from ``torch.initial_seed()`` in each
            process (DataLoader workers get distinct streams). A per-call ``seed`` (see
            :meth:`__call__`) overrides both: the training loader passes one per sample, from
            (seed, epoch, index), so a sample's augmentation does not depend on worker or position.
    """

    def __init__(
        self,
        spec: KeypointSpec,
        input_size: int,
        stride: int,
        min_scale: float = 0.75,
        max_scale: float = 1.5,
        max_rotation: float = 30.0,
        max_translate: float = 40.0,
        scale_type: Literal["short", "long"] = "short",
        flip_prob: float = 0.5,
        flip_label_shift: Literal["reference", "consistent"] | float = "reference",
        seed: int | None = None,
        norm: InputConfig | None = None,
    ) -> None:
        if input_size % stride:
            raise ValueError(f"input_size {input_size} must be a multiple of the output stride {stride}")
        self.spec = spec
        self.input_size = input_size
        self.stride = stride
        self.norm = norm or default_codec_config().input
        if flip_label_shift == "reference":
            shift = float(stride - 1)
        elif flip_label_shift == "consistent":
            shift = 0.0
        else:
            shift = float(flip_label_shift)
        flip_p = flip_prob if spec.can_flip else 0.0
        self.compose = A.Compose(
            [
                RandomAffineCrop(input_size, stride, min_scale, max_scale, max_rotation, max_translate, scale_type),
                FlipWithPairs(spec.flip_index(with_center=True), label_shift=shift, p=flip_p),
            ],
            save_applied_params=True,
        )
        self._seed = seed
        self._seeded_pid: int | None = None

    def _ensure_seeded(self) -> None:
        pid = os.getpid()
        if self._seeded_pid != pid:
            if self._seed is not None:
                seed = self._seed
            else:
                import torch

                seed = torch.initial_seed() % 2**32
            self.compose.set_random_seed(seed)
            self._seeded_pid = pid

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        keypoints: np.ndarray,
        centers: np.ndarray,
        areas: np.ndarray,
        image_out: np.ndarray | None = None,
        seed: int | None = None,
    ) -> TrainSample:
        """Augment one image.

        Args:
            image: uint8 ``[H, W, 3]`` RGB.
            mask: ``[H, W]`` loss mask (bool or 0/1), 0 on ignored regions.
            keypoints: ``[P, K, 3]`` in original px; centers ``[P, 3]``; areas ``[P]`` (original px^2).
            image_out: optional float32 ``[3, S, S]`` array that receives the normalised image.
            seed: draw this sample's parameters from a generator seeded with it (reproducible per
                sample); ``None`` continues the process's stream.
        """
        if seed is not None:
            self.compose.set_random_seed(int(seed))
            self._seeded_pid = os.getpid()
        else:
            self._ensure_seeded()
        out = self.compose(image=image, mask=np.asarray(mask, dtype=np.uint8))
        applied = dict(out["applied_transforms"])
        flipped = "FlipWithPairs" in applied
        return self._finish(
            out["image"], out["mask"], keypoints, centers, areas, applied["RandomAffineCrop"], flipped, image_out
        )

    def replay(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        keypoints: np.ndarray,
        centers: np.ndarray,
        areas: np.ndarray,
        center: tuple[float, float],
        scale: float,
        rotation: float,
        flip: bool,
    ) -> TrainSample:
        """:meth:`__call__` with given parameters instead of random ones (tests, visualisation).

        ``center`` (original px), ``scale`` (crop side / 200) and ``rotation`` (degrees) as in
        :func:`crop_matrix`; ``flip`` applies the pair-swapping flip.
        """
        affine, flipper = self.compose.transforms
        params = {
            "matrix": crop_matrix(np.asarray(center, float), scale, self.input_size, rotation),
            "zoom": self.input_size / (200.0 * scale),
        }
        img = affine.apply(image, **params)
        m = affine.apply_to_mask(np.asarray(mask, dtype=np.uint8), **params)
        if flip:
            img, m = flipper.apply(img), flipper.apply_to_mask(m)
        return self._finish(img, m, keypoints, centers, areas, params, flip)

    def _finish(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        keypoints: np.ndarray,
        centers: np.ndarray,
        areas: np.ndarray,
        affine_params: dict[str, Any],
        flipped: bool,
        image_out: np.ndarray | None = None,
    ) -> TrainSample:
        """Map people with the applied parameters (float64), hide keypoints outside, normalise."""
        affine, flipper = self.compose.transforms
        k = self.spec.num_keypoints
        people = np.concatenate(
            [np.asarray(keypoints, np.float64).reshape(-1, k, 3), np.asarray(centers, np.float64).reshape(-1, 1, 3)],
            axis=1,
        )
        xy = affine.apply_to_keypoints(people[:, :, :2].reshape(-1, 2), **affine_params)
        vis = people[:, :, 2].copy()
        if flipped:
            xy = flipper.apply_to_keypoints(xy, shape=image.shape)
            vis = vis[:, self.spec.flip_index(with_center=True)]
        xy = xy.reshape(people.shape[0], k + 1, 2)
        inside = (xy >= 0).all(-1) & (xy < self.input_size).all(-1)
        vis[:, :k] = np.where(inside[:, :k], vis[:, :k], 0.0)
        joints = np.concatenate([xy / self.stride, vis[:, :, None]], axis=2)
        return TrainSample(
            image=normalize_image(image, self.norm, image_out),
            mask=mask.astype(np.float32),
            keypoints=joints[:, :k],
            centers=joints[:, k],
            areas=np.asarray(areas, np.float64).reshape(-1) * affine_params["zoom"] ** 2,
        )
