"""``iso3d info``: what this installation can run, and why not (after ``python -m xformers.info``)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

from . import __version__
from .utils.imports import probe, version_of

__all__ = ["Entry", "collect", "format_report"]


@dataclass(frozen=True)
class Entry:
    name: str
    value: str


def _gpu_entries() -> list[Entry]:
    if not torch.cuda.is_available():
        return [Entry("gpu", "none (CUDA not available to torch)")]
    props = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    return [
        Entry("gpu", f"{props.name} (sm_{major}{minor}, {props.total_memory / 2**30:.0f} GiB) x{torch.cuda.device_count()}"),
    ]


def _triton_entry() -> Entry:
    ok, why = probe("triton")
    if not ok:
        return Entry("triton", f"unavailable: {why}")
    version = version_of("triton")
    if torch.cuda.is_available():
        return Entry("triton", f"{version}, native on the GPU")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    mode = "interpreter active (TRITON_INTERPRET=1)" if interp else "interpreter only: set TRITON_INTERPRET=1"
    return Entry("triton", f"{version}, no GPU: kernels run on CPU in the {mode}; iso3d uses the PyTorch twins")


def _optional_entry(module: str, label: str, cuda_note: str | None = None) -> Entry:
    ok, why = probe(module)
    if not ok:
        return Entry(label, f"unavailable: {why}")
    text = f"{version_of(module)}"
    if cuda_note and not torch.cuda.is_available():
        text += f" ({cuda_note})"
    return Entry(label, text)


def _nerfacc_entry() -> Entry:
    import importlib.util

    if importlib.util.find_spec("nerfacc") is None:
        return Entry("nerfacc", "unavailable: nerfacc is not installed (pip install nerfacc)")
    # Importing nerfacc's CUDA backend may start a multi-minute JIT build: only report.
    if not torch.cuda.is_available():
        return Entry("nerfacc", "installed; CUDA ops need a GPU (iso3d uses its CPU sampler)")
    prebuilt = importlib.util.find_spec("nerfacc_cuda") is not None
    return Entry("nerfacc", "installed; CUDA ops " + ("prebuilt" if prebuilt else "JIT-compile on first use (minutes)"))


def collect() -> list[Entry]:
    """Gather the report. Queries the GPU and imports optional packages: call it, never at import."""
    entries = [
        Entry("iso3d", __version__),
        Entry("python", platform.python_version()),
        Entry("torch", torch.__version__),
        Entry("torch.cuda", torch.version.cuda or "none (CPU build)"),
        *_gpu_entries(),
        _triton_entry(),
        _optional_entry("tinycudann", "tiny-cuda-nn"),
        _nerfacc_entry(),
        _optional_entry("xformers", "xformers", cuda_note="installed, but no CPU attention kernels"),
        _optional_entry("torchvision", "torchvision"),
        _optional_entry("open_clip", "open_clip"),
        _optional_entry("diffusers", "diffusers"),
        _optional_entry("mcubes", "PyMCubes"),
        _optional_entry("trimesh", "trimesh"),
    ]
    from .utils.torchvision_compat import patch_torchvision_if_needed

    if patch_torchvision_if_needed.cache_info().currsize and patch_torchvision_if_needed():
        entries.append(Entry("torchvision shim", "active: torchvision's C++ ops could not load beside this torch"))
    return entries


def format_report(entries: list[Entry]) -> str:
    width = max(len(e.name) for e in entries)
    return "\n".join(f"{e.name:<{width}} : {e.value}" for e in entries)
