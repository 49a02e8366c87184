"""DEKR: bottom-up human pose estimation via disentangled keypoint regression."""

from dekr.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
