"""The one place where iso3d works around the CPU-torch / CUDA-torchvision mismatch.

Why: on our CPU machines ``torch==2.13.0`` is a CPU build while ``torchvision==0.28.0`` is a CUDA
build whose compiled extension (``torchvision/_C.so``) cannot load. torchvision then still
registers Python "fake" kernels for ``torchvision::nms`` and ``torchvision::qnms`` at import time
and fails with ``RuntimeError: operator torchvision::nms does not exist``. open_clip, timm and
diffusers' UNet import torchvision, so they fail too.

Fix: if (and only if) the extension cannot be loaded, define the two operator *schemas* (no
kernels) before torchvision is imported. torchvision's own ops stay unusable on such a machine
(calling ``nms`` raises), but everything iso3d needs from those libraries imports. Where
torchvision's extension loads normally this module does nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

__all__ = ["patch_torchvision_if_needed"]

# The schemas of torchvision 0.28's C++ ops whose fake kernels are registered at import time.
_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library fragment alive for the life of the process


@functools.lru_cache(maxsize=None)
def patch_torchvision_if_needed() -> bool:
    """Make ``import torchvision`` work beside a CPU-only torch.

    Returns ``True`` when the schemas were defined (the extension could not load), ``False`` when
    nothing had to be done (torchvision absent, already imported, or its extension loads).
    Call it before importing torchvision, open_clip, timm or diffusers' models; iso3d does this
    wherever it imports them.

    Example:
        >>> from iso3d.utils.torchvision_compat import patch_torchvision_if_needed
        >>> isinstance(patch_torchvision_if_needed(), bool)
        True
    """
    global _library
    if "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    import torch

    extension = os.path.join(os.path.dirname(spec.origin), "_C.so")
    if not os.path.exists(extension):
        return False
    try:
        # Exactly what torchvision.extension does first; on success torchvision finds its ops.
        torch.ops.load_library(extension)
        return False
    except (ImportError, OSError):
        pass
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        _library.define(name + schema)
    return True
