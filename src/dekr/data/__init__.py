"""Data: COCO-format keypoint datasets, augmentation, synthetic people and the Lightning DataModule.

Attributes are imported lazily so that ``dekr.data.synthetic`` does not pull in Lightning.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DEKRDataModule": "dekr.data.datamodule",
    "CocoKeypointDataset": "dekr.data.coco",
    "eval_collate": "dekr.data.coco",
    "TrainTransform": "dekr.data.transforms",
    "generate_synthetic": "dekr.data.synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dekr.data' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
