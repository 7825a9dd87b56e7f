"""Loading user images into one canonical form: ``[4, H, W]`` float32 RGBA in ``[0, 1]``.

Documented conversions (never a crash deep inside): grayscale and palette images become RGB(A);
CMYK becomes RGB; 16-bit and 32-bit integer images are rescaled from their full range; images
without alpha get alpha 1 (an RGB image with a plain background is used as it is); images whose
longer side exceeds ``max_side`` are downscaled (antialiased) to it. Refused with a clear error:
missing or undecodable files, images smaller than ``min_side`` pixels, an all-transparent alpha
channel, NaN/out-of-range float arrays, and unsupported types or shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["ImageLoadError", "composite_on_white", "load_image", "save_image_grid"]

MIN_SIDE = 16
MAX_SIDE = 2048


class ImageLoadError(ValueError):
    """The image cannot be used; the message says why and what is expected."""


def _from_pil(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() <= 65535 else float(2**31 - 1)
        return np.repeat((arr / top)[..., None], 3, axis=-1)
    if mode == "F":
        return np.repeat(np.asarray(img, dtype=np.float64)[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info) or "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.float64) / 255.0


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageLoadError(f"{name}: expected an array [H, W], [H, W, 1|3|4], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.integer):
        top = {1: 255.0, 2: 65535.0}.get(arr.dtype.itemsize, float(np.iinfo(arr.dtype).max))
        arr = arr.astype(np.float64) / top
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{name}: contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageLoadError(f"{name}: float images must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
    else:
        raise ImageLoadError(f"{name}: unsupported array dtype {arr.dtype}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 2:  # gray + alpha
        arr = np.concatenate([np.repeat(arr[..., :1], 3, axis=-1), arr[..., 1:]], axis=-1)
    return arr


def load_image(image, *, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> torch.Tensor:
    """Load ``image`` (path, PIL image, numpy array ``[H, W(, C)]`` or tensor ``[C, H, W]``) → ``[4, H, W]``.

    Example:
        >>> import numpy as np
        >>> load_image(np.zeros((32, 48), dtype=np.uint8)).shape  # grayscale -> RGBA
        torch.Size([4, 32, 48])
    """
    from PIL import Image, UnidentifiedImageError

    name = "image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        name = f"image {str(path)!r}"
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file")
        try:
            with Image.open(path) as img:
                img.load()
                arr = _from_pil(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"{name}: cannot decode it as an image ({type(exc).__name__}: {exc})") from None
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(f"{name}: too large to decode safely ({exc})") from None
    elif isinstance(image, Image.Image):
        arr = _from_pil(image)
    elif isinstance(image, np.ndarray):
        arr = _from_array(image, name)
    elif isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise ImageLoadError(f"{name}: expected a tensor [C, H, W] with C in (1, 3, 4), got shape {tuple(image.shape)}")
        arr = _from_array(image.detach().cpu().permute(1, 2, 0).numpy(), name)
    else:
        raise TypeError(f"{name}: expected a path, PIL.Image, numpy array or torch.Tensor, got {type(image).__name__}")

    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise ImageLoadError(f"{name}: {w}x{h} pixels is too small; at least {min_side} pixels per side are needed")
    if arr.shape[-1] == 3:
        arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=-1)
    if arr[..., 3].max() <= 0:
        raise ImageLoadError(f"{name}: the alpha channel is fully transparent: there is no object to see")
    out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        out = torch.nn.functional.interpolate(out[None], size=size, mode="area")[0]
    return out.clamp(0, 1)


def composite_on_white(rgba: torch.Tensor) -> torch.Tensor:  # [..., 4, H, W] -> [..., 3, H, W]
    """RGB over a white background: ``rgb·α + (1 − α)``."""
    rgb, alpha = rgba[..., :3, :, :], rgba[..., 3:, :, :]
    return rgb * alpha + (1 - alpha)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, *, columns: int | None = None) -> Path:
    """Save ``[N, 3, H, W]`` images in ``[0, 1]`` as one PNG grid (one row by default)."""
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (3, 4):
        raise ValueError(f"images must be [N, 3|4, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    columns = columns or n
    rows = -(-n // columns)
    canvas = torch.ones(c, rows * h, columns * w)
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, columns)
        canvas[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    array = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
