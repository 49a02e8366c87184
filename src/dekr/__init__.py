"""DEKR: bottom-up human pose estimation via disentangled keypoint regression."""

import os

# albumentations checks its package index for updates on import: no network call the user did not ask for
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dekr.config import register_resolvers  # noqa: E402

register_resolvers()

__version__ = "0.1.0"
