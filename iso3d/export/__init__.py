"""Export of a density field to meshes with vertex colours."""

from .depth_fusion import fuse_rendered_depth, silhouette_hull
from .mesh import MESH_SURFACES, DensityVolume, EmptySurfaceError, Mesh, MeshExportConfig, density_volume, extract_mesh
from .threshold import silhouette_threshold

__all__ = ["MESH_SURFACES", "DensityVolume", "EmptySurfaceError", "Mesh", "MeshExportConfig", "density_volume", "extract_mesh",
           "fuse_rendered_depth", "silhouette_hull", "silhouette_threshold"]
