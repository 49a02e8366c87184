"""Export a DEKR network, adaptive convolutions included, to ONNX (dynamic batch and image size).

    python src/export.py checkpoint=PATH [model=dekr_w48] [adaptive_impl=deform|grid_sample]
                         [opset=19] [output=dekr.onnx] [input_size=512] [model_from_checkpoint=true]

The file is verified with onnxruntime against the PyTorch model (max abs difference <= ``atol`` on
heatmaps and offsets) before it is written to ``output``; on failure the command exits with code 1
and leaves the unverified file beside it as ``*.unverified.onnx``. See ``conf/export.yaml`` and
:mod:`dekr.deploy.export`.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import dekr  # noqa: F401  (registers the config resolvers)
from dekr.codec import CodecConfig
from dekr.deploy.export import ExportError, ExportResult, export_onnx
from dekr.inference.factory import network_from_config
from dekr.keypoints import build_keypoint_spec
from dekr.model.checkpoint import CheckpointMismatchError

log = logging.getLogger(__name__)


def run_export(cfg: DictConfig) -> ExportResult:
    """Build the model of ``cfg`` (see conf/export.yaml), load its weights, export and verify."""
    spec = build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints, resolve=True))
    model, codec = network_from_config(cfg, spec, CodecConfig.from_mapping(cfg.codec))
    size = cfg.input_size if isinstance(cfg.input_size, int) else list(cfg.input_size)
    result = export_onnx(
        model,
        cfg.output,
        impl=cfg.adaptive_impl,
        opset=cfg.opset,
        input_size=size,
        batch_size=int(cfg.batch_size),
        verify=bool(cfg.verify),
        verify_dynamic=bool(cfg.verify_dynamic),
        atol=float(cfg.atol),
        rtol=float(cfg.get("rtol", 0.0)),
        codec=codec,
    )
    if result.checks:
        log.info(
            "verified in %.1f s; largest difference %.2e (atol %.0e)",
            result.verify_s,
            result.max_abs_diff,
            float(cfg.atol),
        )
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        run_export(cfg)
    except (ExportError, FileNotFoundError, ValueError, CheckpointMismatchError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
