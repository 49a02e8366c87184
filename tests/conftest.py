"""Shared fixtures. Tests run from the project root; sample data lives in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
COCO_SAMPLE = SHARED_DATA / "coco_sample"
CROWDPOSE_SAMPLE = SHARED_DATA / "crowdpose_sample"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    if not COCO_SAMPLE.is_dir():
        pytest.fail(f"sample data missing: {COCO_SAMPLE} (the tests need ../shared/data beside the project)")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def crowdpose_sample() -> Path:
    if not CROWDPOSE_SAMPLE.is_dir():
        pytest.fail(f"sample data missing: {CROWDPOSE_SAMPLE}")
    return CROWDPOSE_SAMPLE


def compose_data(name: str, overrides: list[str] | None = None):
    """The ``data`` node of ``conf/train.yaml`` composed with ``data=<name>`` (codec interpolated),
    as a plain-container DictConfig ready for ``hydra.utils.instantiate``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import dekr  # noqa: F401  (resolvers)

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="train", overrides=["~experiment", f"data={name}", *(overrides or [])])
    return OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))


def synthetic_datamodule(root: Path, **kwargs):
    """A ``DEKRDataModule`` over a ``generate_synthetic`` folder (its standard file layout);
    ``kwargs`` are the other datamodule arguments (``input_size``, ``batch_size``, ...)."""
    from dekr.data import DEKRDataModule

    return DEKRDataModule(
        root=str(root),
        train_ann="annotations/person_keypoints_train.json",
        train_images="images/train",
        val_ann="annotations/person_keypoints_val.json",
        val_images="images/val",
        **kwargs,
    )
