"""Image input/output."""

from .images import ImageLoadError, load_image, save_image_grid

__all__ = ["ImageLoadError", "load_image", "save_image_grid"]
