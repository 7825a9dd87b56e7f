"""Availability probes for optional dependencies: cached, side-effect free, never raising.

Each ``is_<pkg>_available()`` returns ``(ok, reason)``; ``reason`` says why not (the import error)
and carries the install command. Code that needs a package calls :func:`require` at the point of use.
Nothing here queries a GPU or compiles anything.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

__all__ = ["INSTALL_HINTS", "probe", "require", "version_of"]

# pip distribution to install for each importable module iso3d may use.
INSTALL_HINTS = {
    "triton": "pip install triton",
    "xformers": "pip install xformers",
    "tinycudann": "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
    "nerfacc": "pip install nerfacc",
    "open_clip": "pip install open-clip-torch",
    "diffusers": "pip install diffusers",
    "mcubes": "pip install PyMCubes",
    "trimesh": "pip install trimesh",
}


@functools.lru_cache(maxsize=None)
def probe(module: str) -> tuple[bool, str]:
    """Try to import ``module`` once; return ``(True, "")`` or ``(False, why + install hint)``.

    Example:
        >>> probe("math")
        (True, '')
    """
    if importlib.util.find_spec(module) is None:
        return False, f"{module} is not installed ({INSTALL_HINTS.get(module, 'pip install ' + module)})"
    if module in ("open_clip", "diffusers", "timm", "torchvision"):
        from .torchvision_compat import patch_torchvision_if_needed

        patch_torchvision_if_needed()
    try:
        importlib.import_module(module)
    except Exception as exc:  # an installed but broken package is "unavailable", with the cause
        return False, f"{module} is installed but fails to import: {type(exc).__name__}: {exc}"
    return True, ""


def require(module: str, feature: str):
    """Import and return ``module`` or raise ``ImportError`` naming ``feature`` and the install command."""
    ok, reason = probe(module)
    if not ok:
        raise ImportError(f"{feature} requires {module}: {reason}")
    return importlib.import_module(module)


def version_of(module: str) -> str | None:
    """The installed version of ``module`` if it imports, else ``None``."""
    ok, _ = probe(module)
    if not ok:
        return None
    return getattr(importlib.import_module(module), "__version__", "unknown")
