"""Shared benchmark machinery: synchronised timing, peak memory, provenance and a ratio table.

Run: ``pytest benchmarks/ --benchmark-only`` (``make bench``). ``--smoke`` shrinks every shape so
the suite runs in seconds (CI uses it with ``--benchmark-disable`` to keep the code alive).
After the run a side-by-side table per group (same shape, mode, dtype) prints each provider's
median, throughput, peak memory and its speed ratio against the group's baseline provider.
"""

from __future__ import annotations

import os
import platform
import subprocess
import weakref
from dataclasses import dataclass, field

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
patch_torchvision_if_needed()  # before any benchmark imports open_clip → timm → torchvision

_RESULTS: list["BenchRecord"] = []
_PROVENANCE: dict = {}


def pytest_addoption(parser):
    parser.addoption("--smoke", action="store_true", help="tiny shapes: check the benchmarks run, time nothing real")
    parser.addoption("--bench-rounds", type=int, default=None, help="timed rounds per case (default: 20 GPU, 3 CPU)")


@dataclass
class BenchRecord:
    group: str
    provider: str
    baseline: str
    median_s: float | None
    peak_mb: float
    throughput: float | None  # TFLOP/s (attention) or points/s, per ``unit``
    unit: str
    extra: dict = field(default_factory=dict)


class _CPUPeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated while active (CPU has no allocator statistics).

    Counts every new storage an op returns and subtracts it when the storage is freed.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self._seen:
                    self._seen.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory (MiB) allocated by one call of ``fn`` beyond what existed before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    tracker = _CPUPeakMemory()
    with tracker:
        fn()
    return tracker.peak / 2**20


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def provenance(bench_device) -> dict:
    import iso3d

    info = {
        "device": torch.cuda.get_device_name(bench_device) if bench_device.type == "cuda" else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "iso3d": iso3d.__version__,
        "commit": _git_commit(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    _PROVENANCE.update(info)
    return info


@pytest.fixture
def smoke(request) -> bool:
    return request.config.getoption("--smoke")


@pytest.fixture
def run_bench(benchmark, request, bench_device, provenance):
    """``run_bench(fn, group=, provider=, baseline=, work=, unit=, extra=)`` times ``fn`` side by side.

    ``work`` is the FLOPs (unit "TFLOP/s") or items (unit e.g. "Mpoints/s") done by one call;
    ``max_rounds`` caps the rounds of a case that takes seconds per call; ``setup`` runs, untimed,
    before each round.
    """
    rounds = request.config.getoption("--bench-rounds") or (20 if bench_device.type == "cuda" else 3)

    def run(fn, *, group, provider, baseline, work=None, unit="TFLOP/s", extra=None, max_rounds=None, setup=None):
        sync = (lambda: torch.cuda.synchronize(bench_device)) if bench_device.type == "cuda" else (lambda: None)

        def target():
            fn()
            sync()

        peak = peak_memory_mb(fn, bench_device)
        benchmark.group = group
        benchmark.extra_info.update(provenance, provider=provider, peak_mb=round(peak, 2), **(extra or {}))
        benchmark.pedantic(target, rounds=min(rounds, max_rounds or rounds), warmup_rounds=2 if bench_device.type == "cuda" else 1,
                           iterations=1, setup=setup)
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        throughput = None
        if median and work:
            scale = {"T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3}.get(unit[0], 1.0)  # unit prefix
            throughput = work / median / scale
            benchmark.extra_info["throughput"] = f"{throughput:.4g} {unit}"
        _RESULTS.append(BenchRecord(group, provider, baseline, median, peak, throughput, unit, dict(extra or {})))

    return run


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    timed = [r for r in _RESULTS if r.median_s]
    if not timed:
        return
    tr = terminalreporter
    tr.section("iso3d side-by-side (ratio = baseline median / provider median; > 1 is faster)")
    tr.write_line("  ".join(f"{k}={v}" for k, v in _PROVENANCE.items()))
    groups: dict[str, list[BenchRecord]] = {}
    for r in timed:
        groups.setdefault(r.group, []).append(r)
    for group, records in groups.items():
        base = next((r for r in records if r.provider == r.baseline), None)
        tr.write_line(group)
        for r in records:
            ratio = f"{base.median_s / r.median_s:6.2f}x" if base else "   n/a"
            thr = f"{r.throughput:9.3g} {r.unit}" if r.throughput is not None else ""
            note = f"  {r.extra['note']}" if r.extra.get("note") else ""  # a case's own short remark
            tr.write_line(f"  {r.provider:<14} median {r.median_s * 1e3:10.3f} ms  {ratio}  peak {r.peak_mb:10.1f} MiB  {thr}{note}")
