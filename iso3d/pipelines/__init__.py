"""diffusers-style pipelines."""

from .multiview import MultiViewOutput, MultiViewPipeline

__all__ = ["MultiViewOutput", "MultiViewPipeline"]
