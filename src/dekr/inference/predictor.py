"""Images in, poses out: pre-processing, batched forward (flip / multi-scale), decoding, rescoring.

The network is any callable ``model(images) -> (heatmaps, offsets)`` taking ImageNet-normalised RGB
``float32 [B, 3, H, W]`` (a ``torch.nn.Module``, or an ONNX Runtime session wrapped in a function), so
other backends plug in without touching the decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dekr.codec import Codec, CodecConfig, ScaleOutput
from dekr.codec.geometry import flip_input, input_geometry, input_to_original, warp_to_input
from dekr.keypoints import KeypointSpec
from dekr.rescore import Rescorer

Model = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TestConfig:
    """How images are run through the network at test time (the ``test`` config group, shared by
    validation during training, ``eval.py`` and ``predict.py``).

    Attributes:
        input_size: short side of the network input at scale 1 (a multiple of 64).
        flip: average with the mirrored input (flip test); a layout without flip pairs runs without
            it (:attr:`PoseEstimator.flip_test` says what runs).
        scales: test scale factors, including 1.0 (e.g. ``(2.0, 1.0, 0.5)``).
        batch_size: images per forward pass (each pass doubles with flip test).
        max_dets: detections per image counted by the AP metric (COCO: 20).
    """

    __test__ = False  # not a pytest class

    input_size: int
    flip: bool
    scales: tuple[float, ...]
    batch_size: int
    max_dets: int

    def __post_init__(self) -> None:
        if self.input_size <= 0 or self.input_size % 64:
            raise ValueError(f"test.input_size must be a positive multiple of 64, got {self.input_size}")
        if 1.0 not in self.scales:
            raise ValueError(f"test.scales {list(self.scales)} must include 1.0 (the reference scale)")
        if self.batch_size < 1 or self.max_dets < 1:
            raise ValueError(f"test.batch_size and test.max_dets must be >= 1, got {self.batch_size}, {self.max_dets}")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> TestConfig:
        """From a composed ``test`` node (unknown or missing keys are errors)."""
        values = dict(node)
        names = list(cls.__dataclass_fields__)
        if set(values) != set(names):
            raise ValueError(f"test config: keys {sorted(values)} differ from {names}")
        return cls(
            input_size=int(values["input_size"]),
            flip=bool(values["flip"]),
            scales=tuple(float(s) for s in values["scales"]),
            batch_size=int(values["batch_size"]),
            max_dets=int(values["max_dets"]),
        )


@dataclass
class PoseResult:
    """Poses of one image.

    Attributes:
        poses: float32 ``[P, K, 3]``: x, y in original image pixels, joint score.
        scores: float32 ``[P]`` person scores (rescored when a rescorer is set).
    """

    poses: np.ndarray
    scores: np.ndarray
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


class PoseEstimator:
    """Batched DEKR inference.

    Args:
        model: ``model(images [B, 3, H, W]) -> (heatmaps [B, K+1, H/4, W/4], offsets [B, 2K, H/4, W/4])``.
            A ``torch.nn.Module`` runs in eval mode (its mode is restored after each call).
        spec: keypoint layout of the model.
        codec: the codec settings (stride, input normalisation, decoding); ``None``: the defaults.
        test: input size, flip test, scales and batch size (:class:`TestConfig`).
        rescorer: optional :class:`dekr.rescore.Rescorer`, applied once per batch.
        device: where inputs go (default: the device of the module's parameters at call time, so the
            estimator follows a model moved later, e.g. by Lightning; CPU for other callables).
    """

    def __init__(
        self,
        model: Model,
        spec: KeypointSpec,
        codec: CodecConfig | None,
        test: TestConfig,
        rescorer: Rescorer | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model
        self._device = None if device is None else torch.device(device)
        self.spec = spec
        self.codec = Codec(spec, codec)
        self.cfg = self.codec.cfg
        self.test = test
        self.input_size = test.input_size
        #: whether flip test runs (requested and the layout has flip pairs)
        self.flip_test = test.flip and spec.can_flip
        self.scales = tuple(sorted(test.scales, reverse=True))
        self.rescorer = rescorer
        self.batch_size = test.batch_size
        self.mean = torch.tensor(self.cfg.input.mean).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(self.cfg.input.std).view(1, 3, 1, 1) * 255.0

    @property
    def device(self) -> torch.device:
        """Device of the inputs: the given one, else the module's parameters' device, else CPU."""
        if self._device is not None:
            return self._device
        if isinstance(self.model, torch.nn.Module):
            param = next(self.model.parameters(), None)
            if param is not None:
                return param.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ pieces
    def _to_tensor(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        device = self.device
        x = torch.from_numpy(np.stack(arrays)).to(device).permute(0, 3, 1, 2).float()
        return (x - self.mean.to(device)) / self.std.to(device)

    def _forward(self, x: torch.Tensor, factor: float) -> ScaleOutput:
        if self.flip_test:
            hm, off = self.model(torch.cat((x, flip_input(x, self.cfg.stride - 1))))
            n = x.shape[0]
            return ScaleOutput(factor, hm[:n], off[:n], hm[n:], off[n:])
        hm, off = self.model(x)
        return ScaleOutput(factor, hm, off)

    def _run_group(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same-size images → padded poses ``[G, P, K, 3]`` (original px), scores, valid."""
        geos = [input_geometry(im.shape[0], im.shape[1], self.input_size, 1.0) for im in images]
        outputs = []
        for f in self.scales:
            g_f = [input_geometry(im.shape[0], im.shape[1], self.input_size, f) for im in images]
            x = self._to_tensor([warp_to_input(im, g) for im, g in zip(images, g_f)])
            outputs.append(self._forward(x, f))
        decoded = self.codec.decode(outputs)
        xy = input_to_original(decoded.poses[..., :2], geos)
        poses = torch.cat((xy, decoded.poses[..., 2:]), -1)
        return poses, decoded.scores, decoded.valid

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[PoseResult]:
        """Poses for a list of RGB ``uint8 [H, W, 3]`` images (any sizes; grouped by input size)."""
        module = self.model if isinstance(self.model, torch.nn.Module) else None
        was_training = module is not None and module.training
        if was_training:
            module.eval()
        try:
            with torch.inference_mode():
                return self._predict_batch(images)
        finally:
            if was_training:
                module.train()

    def _predict_batch(self, images: Sequence[np.ndarray]) -> list[PoseResult]:
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"image {i}: expected uint8 [H, W, 3] RGB, got {im.dtype} {tuple(im.shape)}")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            size = input_geometry(im.shape[0], im.shape[1], self.input_size).size
            groups.setdefault(size, []).append(i)
        per_image: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(images)  # type: ignore[list-item]
        for idx in groups.values():
            poses, scores, valid = self._run_group([images[i] for i in idx])
            for j, i in enumerate(idx):
                per_image[i] = (poses[j][valid[j]], scores[j][valid[j]])
        if self.rescorer is not None and per_image:
            self.rescorer.to(self.device)
            counts = [len(s) for _, s in per_image]
            new = self.rescorer(torch.cat([p for p, _ in per_image]), torch.cat([s for _, s in per_image]))
            per_image = [(p, s) for (p, _), s in zip(per_image, new.split(counts))]
        return [PoseResult(p.float().cpu().numpy(), s.float().cpu().numpy()) for p, s in per_image]

    def __call__(self, images: Sequence[np.ndarray]) -> list[PoseResult]:
        """Same as :meth:`predict_batch`, in chunks of ``batch_size``."""
        out: list[PoseResult] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self.predict_batch(images[start : start + self.batch_size]))
        return out

    def stream(self, images: Iterable[np.ndarray]) -> Iterator[PoseResult]:
        """Lazily predict an iterable of images (e.g. video frames), ``batch_size`` at a time."""
        chunk: list[np.ndarray] = []
        for im in images:
            chunk.append(im)
            if len(chunk) == self.batch_size:
                yield from self.predict_batch(chunk)
                chunk = []
        if chunk:
            yield from self.predict_batch(chunk)


__all__ = ["PoseEstimator", "PoseResult", "TestConfig"]
