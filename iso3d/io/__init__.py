"""Image input/output."""

from .images import ImageLoadError, composite_on_white, load_image, save_image_grid

__all__ = ["ImageLoadError", "composite_on_white", "load_image", "save_image_grid"]
