"""Images in, poses out: pre-processing, batched forward (flip / multi-scale), decoding, rescoring.

The network is any callable ``model(images) -> (heatmaps, offsets)`` taking ImageNet-normalised RGB
``float32 [B, 3, H, W]`` (a ``torch.nn.Module``, or an ONNX Runtime session wrapped in a function), so
other backends plug in without touching the decoder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from dekr.codec import Codec, CodecConfig, ScaleOutput, default_codec_config
from dekr.codec.geometry import flip_input, input_geometry, input_to_original, warp_to_input
from dekr.keypoints import COCO, KeypointSpec, build_keypoint_spec, check_num_keypoints
from dekr.rescore import Rescorer
from dekr.results import FrameResult
from dekr.track import PoseTracker, TrackConfig

log = logging.getLogger(__name__)

IMAGE_EXT = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXT = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})

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

    def stream(
        self,
        source: str | os.PathLike | Iterable[np.ndarray],
        track: bool | TrackConfig | Mapping[str, Any] | PoseTracker = False,
        fps: float | None = None,
    ) -> Iterator[FrameResult]:
        """Lazily predict a sequence of frames, ``batch_size`` at a time, one :class:`FrameResult` each.

        Args:
            source: a video file, a folder of images (sorted by name; unreadable files are skipped
                with a warning) or any iterable of RGB ``uint8 [H, W, 3]`` arrays (e.g. a generator).
            track: ``True`` (default :class:`dekr.track.TrackConfig`), a ``TrackConfig`` or mapping
                of its fields (e.g. ``{"patience": 10, "smoothing": {"enabled": True}}``), or a
                :class:`dekr.track.PoseTracker` to continue: results then carry ``track_ids``.
            fps: frame rate for the smoothing filter (default: the video's, else 25).
        """
        frames = FrameSource(source)
        tracker: PoseTracker | None = None
        if isinstance(track, PoseTracker):
            tracker = track
        elif isinstance(track, (TrackConfig, Mapping)) or track:
            config = (
                track
                if isinstance(track, TrackConfig)
                else TrackConfig.from_mapping({**(track if isinstance(track, Mapping) else {}), "enabled": True})
            )
            tracker = PoseTracker(self.spec, config, fps=fps or frames.fps)

        def emit(chunk: list[tuple[int, str | None, np.ndarray]]) -> Iterator[FrameResult]:
            for (index, name, _), res in zip(chunk, self.predict_batch([c[2] for c in chunk])):
                out = FrameResult(res.poses, res.scores, self.spec, frame=index, source=name)
                yield out if tracker is None else out.track(tracker)

        chunk: list[tuple[int, str | None, np.ndarray]] = []
        for item in frames:
            chunk.append(item)
            if len(chunk) == self.batch_size:
                yield from emit(chunk)
                chunk = []
        if chunk:
            yield from emit(chunk)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        spec: KeypointSpec | Mapping | str | None = None,
        input_size: int = 512,
        flip: bool = True,
        scales: Sequence[float] = (1.0,),
        batch_size: int = 4,
        max_dets: int = 20,
        device: str | torch.device | None = None,
        codec: CodecConfig | Mapping[str, Any] | None = None,
        rescore: str | os.PathLike | None = None,
    ) -> PoseEstimator:
        """An estimator built from what a checkpoint stores: its keypoint layout, codec and network.

        Args:
            path: a training ``.ckpt`` or a ``python -m dekr.convert`` file (read with ``weights_only``).
            spec: the layout, for files that store none (converted official / MMPose weights: default
                COCO); must name the stored layout's keypoints when the file has one.
            input_size, flip, scales, batch_size, max_dets: the test settings (:class:`TestConfig`).
            device: ``None``/``"auto"``: CUDA when available, else CPU.
            codec: decoding settings (default: the checkpoint's stored codec, else the codec group's
                defaults); the stored stride and input normalisation always win (they belong to the network).
            rescore: optional rescoring-net weights (:meth:`dekr.rescore.Rescorer.from_file`).
        """
        from dekr.model.build import build_network
        from dekr.model.checkpoint import read_checkpoint

        stored = read_checkpoint(path)
        layout = stored_layout(stored.keypoints, spec, str(stored.path))
        base = stored.codec if codec is None and isinstance(stored.codec, Mapping) else codec
        cfg = network_codec(stored.codec, _codec(base, str(stored.path)), str(stored.path))
        dev = resolve_device(device)
        net = build_network(layout, None, stored).eval().to(dev)
        test = (input_size, flip, scales, batch_size, max_dets)
        return cls._assemble(net, layout, cfg, test, rescore, dev)

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        spec: KeypointSpec | Mapping | str | None = None,
        input_size: int = 512,
        flip: bool = True,
        scales: Sequence[float] = (1.0,),
        batch_size: int = 4,
        max_dets: int = 20,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        codec: CodecConfig | Mapping[str, Any] | None = None,
        rescore: str | os.PathLike | None = None,
    ) -> PoseEstimator:
        """An estimator running an exported ``.onnx`` file with onnxruntime (no PyTorch model code).

        The file stores the codec and the keypoint count, not the layout's names: give ``spec`` for
        any layout but COCO (the default, only accepted for 17 keypoints). Other arguments as in
        :meth:`from_checkpoint`; ``providers``/``threads`` go to :class:`dekr.deploy.OnnxModel`.
        """
        from dekr.deploy import load_backend

        model = load_backend("onnx", onnx_path=path, providers=providers, threads=threads)
        layout = build_keypoint_spec(spec) if spec is not None else COCO
        k = getattr(model, "num_keypoints", None)
        if k is not None:
            check_num_keypoints(k, layout, str(path))
        stored = getattr(model, "metadata", {}).get("dekr.codec")
        base = json.loads(stored) if codec is None and stored else codec
        cfg = _codec(base, str(path))
        return cls._assemble(model, layout, cfg, (input_size, flip, scales, batch_size, max_dets), rescore, "cpu")

    @classmethod
    def _assemble(
        cls,
        model: Model,
        layout: KeypointSpec,
        codec: CodecConfig,
        test: tuple[int, bool, Sequence[float], int, int],
        rescore: str | os.PathLike | None,
        device: str | torch.device,
    ) -> PoseEstimator:
        """The estimator of a loaded model: test settings ``(input_size, flip, scales, batch_size,
        max_dets)`` checked by :class:`TestConfig`, the optional rescoring net read for the layout."""
        input_size, flip, scales, batch_size, max_dets = test
        scales = tuple(float(f) for f in scales)
        settings = TestConfig(int(input_size), bool(flip), scales, int(batch_size), int(max_dets))
        rescorer = Rescorer.from_file(rescore, layout) if rescore else None
        return cls(model, layout, codec, settings, rescorer=rescorer, device=device)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> PoseEstimator:
        """:meth:`from_onnx` for a ``.onnx`` file, else :meth:`from_checkpoint` (same arguments)."""
        if Path(path).suffix.lower() == ".onnx":
            return cls.from_onnx(path, **kwargs)
        return cls.from_checkpoint(path, **kwargs)


def _codec(node: CodecConfig | Mapping[str, Any] | None, origin: str) -> CodecConfig:
    if isinstance(node, CodecConfig):
        return node
    if node is None:
        return default_codec_config()
    return CodecConfig.from_mapping(node, origin=f"{origin} (codec)")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None`` / ``auto`` → CUDA when available, else CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stored_layout(
    stored: Any, spec: KeypointSpec | Mapping | str | None, origin: str, fix: str = "drop spec= to use the stored one"
) -> KeypointSpec:
    """The layout a checkpoint stores (plain data) or ``spec``; with both, they must name the same
    keypoints (else a ``ValueError`` naming both and ``fix``). Neither: COCO."""
    given = None if spec is None else build_keypoint_spec(spec)
    if isinstance(stored, str):  # a built-in layout's name
        stored = {"builtin": stored}
    if isinstance(stored, Mapping) and ("names" in stored or "builtin" in stored):
        layout = build_keypoint_spec(dict(stored))
        if given is not None and given.names != layout.names:
            raise ValueError(
                f"{origin} was trained on the keypoint layout '{layout.name}' ({layout.num_keypoints} keypoints: "
                f"{', '.join(layout.names[:4])}, ...) but '{given.name}' ({given.num_keypoints}: "
                f"{', '.join(given.names[:4])}, ...) was given; {fix}"
            )
        return given or layout
    return given or COCO


def network_codec(stored: Any, codec: CodecConfig, origin: str) -> CodecConfig:
    """``codec`` with the stride and input normalisation a checkpoint stores (they belong to the
    trained network); the decoding settings stay the caller's."""
    if not isinstance(stored, Mapping):
        return codec
    trained = CodecConfig.from_mapping(stored, origin=f"{origin} (stored codec)")
    if (trained.stride, trained.input) != (codec.stride, codec.input):
        log.warning(
            "%s was trained with stride %d and input normalisation %s: using those",
            origin,
            trained.stride,
            trained.input,
        )
    return codec.replace(stride=trained.stride, input=trained.to_dict()["input"])


class FrameSource:
    """Frames of a video file, a folder of images or an iterable of RGB arrays, as
    ``(index, name, image)`` with RGB ``uint8 [H, W, 3]`` images.

    Attributes:
        fps: the video's frame rate (``None`` for images and iterables).
    """

    def __init__(self, source: str | os.PathLike | Iterable[np.ndarray]) -> None:
        self.source = source
        self.fps: float | None = None
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist; give a video file, a folder of images or frames")
            if path.is_file():
                cap = cv2.VideoCapture(str(path))
                self.fps = (cap.get(cv2.CAP_PROP_FPS) or None) if cap.isOpened() else None
                cap.release()

    def __iter__(self) -> Iterator[tuple[int, str | None, np.ndarray]]:
        if not isinstance(self.source, (str, os.PathLike)):
            for i, im in enumerate(self.source):
                yield i, None, np.ascontiguousarray(im)
            return
        path = Path(self.source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXT)
            for i, p in enumerate(files):
                data = np.fromfile(str(p), dtype=np.uint8)
                img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
                if img is None:
                    log.warning("skipped %s: not a readable image", p)
                    continue
                yield i, p.name, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            return
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise ValueError(f"{path}: not a readable video")
        try:
            i = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield i, path.name, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            cap.release()


__all__ = [
    "FrameSource",
    "PoseEstimator",
    "PoseResult",
    "TestConfig",
    "network_codec",
    "resolve_device",
    "stored_layout",
]
