"""iso3d — one image to a 3D asset by the Isotropic3D method, on fast Triton kernels.

``import iso3d`` is light: it imports neither Triton, diffusers, open_clip nor torchvision, and
touches no GPU. Subpackages load what they need when used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
