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
