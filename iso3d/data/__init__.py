"""Procedural multi-view data with known geometry."""

from .dataset import MultiViewDataset, MultiViewSample, ViewSampling
from .procedural import ObjectSampling, ProceduralObject, RenderSettings, random_object, render_object

__all__ = ["MultiViewDataset", "MultiViewSample", "ObjectSampling", "ProceduralObject", "RenderSettings", "ViewSampling",
           "random_object", "render_object"]
