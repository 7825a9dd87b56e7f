"""Backend capabilities shared by iso3d's kernels (xformers-style "not supported reasons").

A backend is chosen per call: ``"auto"`` takes the first capable backend in priority order; an
explicit request that cannot be met raises :class:`BackendUnavailableError` listing every reason.
Probes are lazy: nothing here touches the GPU or imports Triton at import time.
"""

from __future__ import annotations

import os

import torch

from iso3d.utils.imports import probe

__all__ = ["BackendUnavailableError", "autotune_candidates", "cdiv", "interpreter_active", "select_backend",
           "triton_device_reasons"]


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for launch grids (without importing Triton)."""
    return -(-a // b)


def autotune_candidates(tiles: list, default, interpreter_tile):
    """The tiles a Triton autotuner times: ``tiles``; only ``default`` when ``ISO3D_TRITON_AUTOTUNE=0``
    (one compile per specialization: GPU test runs); ``interpreter_tile`` under the interpreter, where
    autotuning cannot time anything."""
    if interpreter_active():
        return [interpreter_tile]
    return list(tiles) if os.environ.get("ISO3D_TRITON_AUTOTUNE", "1") != "0" else [default]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these inputs; the message lists why."""


def interpreter_active() -> bool:
    """True when Triton kernels are interpreted on the CPU (``TRITON_INTERPRET=1`` set before
    the kernels were defined, as iso3d's tests do)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_device_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why Triton cannot run on ``device`` with ``dtype`` (empty list: it can)."""
    ok, why = probe("triton")
    if not ok:
        return [why]
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8 and dtype == torch.bfloat16:
            return [f"bf16 needs a GPU of compute capability >= 8.0, got {major}.x"]
        return []
    if device.type == "cpu":
        if interpreter_active():
            return []
        return ["CPU tensors run Triton only in its interpreter: set TRITON_INTERPRET=1 before importing iso3d.kernels"]
    return [f"device {device.type!r} is not supported by Triton here"]


def select_backend(op: str, backend: str, reasons: dict[str, list[str]], auto_order: list[str]) -> str:
    """Resolve ``backend`` ("auto" or a name) given each backend's refusal reasons.

    ``reasons`` maps every backend name to its list of reasons (empty: capable); ``auto_order`` is
    the priority list for ``"auto"``.
    """
    if backend == "auto":
        for name in auto_order:
            if not reasons[name]:
                return name
        backend = auto_order[-1]
    if backend not in reasons:
        raise ValueError(f"{op}: backend must be 'auto' or one of {sorted(reasons)}, got {backend!r}")
    if reasons[backend]:
        lines = [f"{op}: backend {backend!r} cannot run these inputs:"]
        lines += [f"  - {name}: {'; '.join(why) or 'capable'}" for name, why in reasons.items()]
        raise BackendUnavailableError("\n".join(lines))
    return backend
