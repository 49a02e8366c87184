"""ONNX export with the adaptive convolutions, the onnxruntime backend and the PyTorch speed paths.

The small model (HRNet-W18-small) is exported once per graph at 64x64 with random weights (outputs
of order 1, so the 1e-4 tolerance means something). The deform export (about 20-35 s on 2 cores) is a
module fixture shared by the tests marked ``slow`` here; ``make test`` runs them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dekr.deploy import load_backend
from dekr.deploy.export import (
    ExportVerificationError,
    export_onnx,
    prepare_for_export,
    verify_onnx,
)
from dekr.deploy.onnx_backend import OnnxModel
from dekr.deploy.speed import InferenceModel, optimize_for_inference
from dekr.keypoints import COCO
from dekr.model import DEKR
from dekr.model.build import build_network

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights with outputs of order 1 and adaptive transforms that move the taps off the grid."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "transform" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.5))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def small_model() -> DEKR:
    return _randomise(DEKR(num_keypoints=17, backbone="hrnet_w18_small", adaptive_impl="grid_sample"))


@pytest.fixture(scope="module")
def deform_export(small_model: DEKR, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("onnx") / "w18s_deform.onnx"
    result = export_onnx(small_model, path, impl="deform", input_size=64, model_kwargs={"backbone": "hrnet_w18_small"})
    return result


def _max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.slow
def test_deform_export_matches_pytorch(deform_export, small_model: DEKR) -> None:
    import onnx

    graph = onnx.load(str(deform_export.path))
    ops = {n.op_type for n in graph.graph.node}
    assert "DeformConv" in ops, "the adaptive convolutions must stay DeformConv, not plain convs"
    assert deform_export.opset >= 19
    assert len(deform_export.checks) == 2  # export size and a second (dynamic) size
    for check in deform_export.checks:
        assert check["heatmaps"] <= ATOL and check["offsets"] <= ATOL
        assert check["heatmaps_scale"] > 0.05 and check["offsets_scale"] > 0.05  # a meaningful comparison
    assert not deform_export.path.with_name("w18s_deform.unverified.onnx").exists()


@pytest.mark.slow
def test_dynamic_batch_and_size(deform_export, small_model: DEKR) -> None:
    runner = OnnxModel(deform_export.path, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 128, 96, generator=torch.Generator().manual_seed(3))
    heatmaps, offsets = runner(x)
    assert heatmaps.shape == (3, 18, 32, 24) and offsets.shape == (3, 34, 32, 24)
    assert heatmaps.dtype == torch.float32
    with torch.no_grad():
        ref = small_model(x)
    assert _max_diff((heatmaps, offsets), ref) <= ATOL
    # numpy input works too and gives the same result
    hm_np, _ = runner(x.numpy())
    assert torch.equal(hm_np, heatmaps)


@pytest.mark.slow
def test_onnx_metadata(deform_export) -> None:
    runner = OnnxModel(deform_export.path, providers=["CPUExecutionProvider"])
    assert runner.num_keypoints == 17
    assert runner.adaptive_impl == "deform"
    assert runner.input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert json.loads(runner.metadata["dekr.model_kwargs"]) == {"backbone": "hrnet_w18_small"}


@pytest.mark.slow
def test_onnx_backend_does_not_import_model_code(deform_export) -> None:
    code = (
        "import sys, numpy as np\n"
        "from dekr.deploy import load_backend\n"
        f"m = load_backend('onnx', onnx_path=r'{deform_export.path}', providers=['CPUExecutionProvider'])\n"
        "hm, off = m(np.zeros((1, 3, 64, 64), np.float32))\n"
        "assert tuple(hm.shape) == (1, 18, 16, 16), hm.shape\n"
        "bad = [k for k in sys.modules if k.startswith('dekr.model') or k == 'timm']\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_onnx_backend_input_errors(deform_export) -> None:
    runner = OnnxModel(deform_export.path, providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        runner(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(TypeError, match="normalise"):
        runner(np.zeros((1, 3, 64, 64), np.uint8))
    with pytest.raises(FileNotFoundError, match="src/export.py"):
        OnnxModel(deform_export.path.with_name("missing.onnx"))


@pytest.mark.slow
def test_verification_fails_loudly(deform_export) -> None:
    other = _randomise(DEKR(num_keypoints=17, backbone="hrnet_w18_small"), seed=1)
    with pytest.raises(ExportVerificationError, match=r"does not match PyTorch.*heatmaps max \|diff\|"):
        verify_onnx(deform_export.path, other, [(1, 3, 64, 64)])


@pytest.mark.slow
def test_grid_sample_export_opset16(small_model: DEKR, tmp_path: Path) -> None:
    import onnx

    result = export_onnx(small_model, tmp_path / "gs.onnx", impl="grid_sample", opset=16, input_size=64)
    assert result.opset == 16
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "GridSample" in ops and "DeformConv" not in ops
    assert result.max_abs_diff <= ATOL
    assert [c["shape"] for c in result.checks] == [[1, 3, 64, 64], [2, 3, 96, 128]]


def test_export_graph_rewrite_is_exact(small_model: DEKR) -> None:
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = small_model(x)
        for impl in ("grid_sample", "deform"):
            assert _max_diff(prepare_for_export(small_model, impl)(x), ref) < 1e-5
    assert all(m.impl == "grid_sample" for m in small_model.modules() if hasattr(m, "impl"))  # untouched


def test_bad_checkpoint_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.ckpt.*dekr.convert"):
        build_network(COCO, {"backbone": "hrnet_w18_small"}, tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        build_network(COCO, {"backbone": "hrnet_w18_small"}, garbage)


def test_bad_options_are_clear_errors(small_model: DEKR, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset 17 is too old for impl=deform.*DeformConv"):
        export_onnx(small_model, tmp_path / "x.onnx", impl="deform", opset=17, input_size=64)
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(small_model, tmp_path / "x.onnx", input_size=50)
    with pytest.raises(ValueError, match="adaptive_impl must be one of"):
        export_onnx(small_model, tmp_path / "x.onnx", impl="conv", input_size=64)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_backend("tensorrt")
    with pytest.raises(ValueError, match="onnx=PATH"):
        load_backend("onnx")


def test_checkpoint_round_trip_through_build_network(small_model: DEKR, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": small_model.state_dict()}, path)
    net = build_network(COCO, {"backbone": "hrnet_w18_small"}, path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _max_diff(net(x), small_model(x)) == 0.0


@pytest.mark.slow
def test_onnx_and_torch_backends_give_the_same_poses(deform_export, small_model: DEKR, coco_sample: Path) -> None:
    """PoseEstimator (flip test, batch 2) gives the same result with either backend.

    On the sample images the network outputs the predictor produced are compared (random weights give
    hundreds of near-equal pose scores there, so the order of the decoded poses is not a stable
    thing to compare); on texture images, whose poses have distinct scores, the poses themselves.
    """
    import cv2

    from dekr.codec import codec_config
    from dekr.inference.predictor import PoseEstimator, TestConfig

    files = sorted(coco_sample.rglob("*.jpg"))[:2]
    assert files, f"no sample images under {coco_sample}"
    samples = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    textures = [np.random.default_rng(i).integers(0, 255, (128, 128, 3), dtype=np.uint8) for i in range(2)]
    outputs: dict[str, list] = {"torch": [], "onnx": []}
    poses = {}
    for kind in ("torch", "onnx"):
        model = load_backend(
            kind,
            model=small_model,
            onnx_path=deform_export.path if kind == "onnx" else None,
            providers=["CPUExecutionProvider"] if kind == "onnx" else None,
        )

        def recording(images: torch.Tensor, model=model, kind=kind) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(images)
            outputs[kind].append(out)
            return out

        estimator = PoseEstimator(
            recording,
            COCO,
            codec_config({"centers": {"max_people": 5}}),
            TestConfig(input_size=128, flip=True, scales=(1.0,), batch_size=2, max_dets=20),
        )
        estimator(samples)
        poses[kind] = estimator(textures)
    assert len(outputs["torch"]) == len(outputs["onnx"]) >= 2
    for out_torch, out_onnx in zip(outputs["torch"], outputs["onnx"]):
        assert out_torch[0].shape == out_onnx[0].shape
        assert _max_diff(out_onnx, out_torch) <= ATOL
    for r_torch, r_onnx in zip(poses["torch"], poses["onnx"]):
        assert len(r_torch) == len(r_onnx) > 0
        np.testing.assert_allclose(r_onnx.poses, r_torch.poses, atol=1e-3)
        np.testing.assert_allclose(r_onnx.scores, r_torch.scores, atol=1e-6)


# --------------------------------------------------------------------------- speed paths
def test_channels_last_and_bf16_on_cpu(small_model: DEKR) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = small_model(x)
        fast = optimize_for_inference(_copy(small_model), channels_last=True)
        assert _max_diff(fast(x), ref) < 1e-4
        bf16 = optimize_for_inference(_copy(small_model), precision="bf16")
        out = bf16(x)
    assert all(o.dtype == torch.float32 and o.is_contiguous() for o in out)
    scale = max(float(r.abs().max()) for r in ref)
    assert _max_diff(out, ref) < 0.1 * scale  # bf16 keeps ~2-3 significant digits
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        optimize_for_inference(_copy(small_model), precision="fp16")


def test_compile_falls_back_to_eager(small_model: DEKR, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(model: nn.Module, **_: object):
        def run(*args: object) -> None:
            raise RuntimeError("inductor: no working C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = optimize_for_inference(_copy(small_model), compile=True)
    assert isinstance(model, InferenceModel) and model.compiled
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(RuntimeWarning, match="falling back to eager"), torch.inference_mode():
        out = model(x)
    assert not model.compiled
    with torch.inference_mode():
        assert _max_diff(out, small_model(x)) == 0.0
    monkeypatch.setattr("dekr.deploy.speed.compile_supported", lambda: (False, "dynamo unsupported here"))
    with pytest.warns(RuntimeWarning, match="dynamo unsupported here; running eager"):
        model = optimize_for_inference(_copy(small_model), compile=True)
    assert not model.compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = optimize_for_inference(_copy(small_model))  # no compile: no warning
    assert "_compiled" not in dict(model.named_modules())


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
