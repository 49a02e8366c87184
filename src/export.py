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

from dekr.deploy.export import ExportError, ExportResult, build_model, export_onnx
from dekr.inference.factory import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def run_export(cfg: DictConfig) -> ExportResult:
    """Build the model of ``cfg`` (see conf/export.yaml), load its weights, export and verify."""
    from_ckpt = bool(cfg.model_from_checkpoint) and cfg.checkpoint is not None
    model_node = None if from_ckpt else OmegaConf.to_container(cfg.model, resolve=True)
    model = build_model(model_node, cfg.checkpoint, model_from_checkpoint=from_ckpt)
    if not cfg.checkpoint:
        log.warning("no checkpoint given: exporting untrained weights")
    size = cfg.input_size if isinstance(cfg.input_size, int) else list(cfg.input_size)
    kwargs = {k: v for k, v in model_node.items() if k != "_target_"} if isinstance(model_node, dict) else None
    result = export_onnx(
        model, cfg.output, impl=cfg.adaptive_impl, opset=cfg.opset, input_size=size,
        batch_size=int(cfg.batch_size), verify=bool(cfg.verify), verify_dynamic=bool(cfg.verify_dynamic),
        atol=float(cfg.atol), rtol=float(cfg.get("rtol", 0.0)), model_kwargs=kwargs or None,
    )
    if result.checks:
        log.info("verified in %.1f s; largest difference %.2e (atol %.0e)", result.verify_s, result.max_abs_diff,
                 float(cfg.atol))
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        run_export(cfg)
    except (ExportError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
