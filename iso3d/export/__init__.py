"""Export of a density field to meshes with vertex colours."""

from .mesh import Mesh, MeshExportConfig, extract_mesh
from .threshold import silhouette_threshold

__all__ = ["Mesh", "MeshExportConfig", "extract_mesh", "silhouette_threshold"]
