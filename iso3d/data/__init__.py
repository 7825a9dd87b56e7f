"""Procedural multi-view data with known geometry."""

from .dataset import MultiViewDataset, MultiViewSample, ViewSampling
from .procedural import ProceduralObject, RenderSettings, random_object, render_object

__all__ = ["MultiViewDataset", "MultiViewSample", "ProceduralObject", "RenderSettings", "ViewSampling",
           "random_object", "render_object"]
