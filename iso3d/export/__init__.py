"""Export of a density field to meshes with vertex colours."""

from .mesh import Mesh, MeshExportConfig, extract_mesh

__all__ = ["Mesh", "MeshExportConfig", "extract_mesh"]
