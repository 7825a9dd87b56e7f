"""Evaluation of generated 3D assets against known geometry (``iso3d eval``)."""

from .compare import METHODS, EvalConfig, evaluate_methods
from .geometry import Alignment, align, chamfer_distance, normalization, volume_iou

__all__ = ["METHODS", "Alignment", "EvalConfig", "align", "chamfer_distance", "evaluate_methods", "normalization",
           "volume_iou"]
