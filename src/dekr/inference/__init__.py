"""Inference: test geometry, decoding (flip / multi-scale / pose NMS), batched predictor.

Main entry points: :class:`PoseEstimator` (images → poses in original pixels) and
:func:`decode` (network outputs → poses), configured by :class:`DecodeConfig`.
"""

from dekr.inference.decode import DecodeConfig, DecodedPoses, ScaleOutput, decode
from dekr.inference.geometry import InputGeometry, input_geometry, input_to_original, warp_to_input
from dekr.inference.predictor import PoseEstimator, PoseResult, flip_input

Predictor = PoseEstimator

__all__ = [
    "DecodeConfig", "DecodedPoses", "InputGeometry", "PoseEstimator", "PoseResult", "Predictor", "ScaleOutput",
    "decode", "flip_input", "input_geometry", "input_to_original", "warp_to_input",
]
