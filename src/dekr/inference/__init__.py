"""Inference: images in, poses out (:class:`PoseEstimator`, configured by :class:`TestConfig` and the
codec), and building it from a composed config (:mod:`dekr.inference.factory`)."""

from dekr.inference.predictor import PoseEstimator, PoseResult, TestConfig

__all__ = ["PoseEstimator", "PoseResult", "TestConfig"]
