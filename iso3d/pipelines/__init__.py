"""diffusers-style pipelines: 4 consistent views of an image, and image → 3D asset."""

from .isotropic3d import Isotropic3DOutput, Isotropic3DPipeline
from .multiview import MultiViewOutput, MultiViewPipeline

__all__ = ["Isotropic3DOutput", "Isotropic3DPipeline", "MultiViewOutput", "MultiViewPipeline"]
