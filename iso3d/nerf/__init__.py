"""Hash-grid NeRF: encoding module, implicit volume (density + albedo), shading and volume renderer."""

from .encoding import HashGridEncoding
from .field import FieldConfig, FieldOutput, ImplicitVolume, finite_difference_normals
from .renderer import RendererConfig, RenderOutput, VolumeRenderer
from .shading import ShadingMode, shade

__all__ = [
    "FieldConfig",
    "FieldOutput",
    "HashGridEncoding",
    "ImplicitVolume",
    "RenderOutput",
    "RendererConfig",
    "ShadingMode",
    "VolumeRenderer",
    "finite_difference_normals",
    "shade",
]
