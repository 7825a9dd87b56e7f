"""Replay a captured CUDA graph of an inference-only forward pass (the SDS step's UNet call).

Why: at the official size the UNet's classifier-free-guidance forward at 32² latents is bound by
kernel launches, not arithmetic (benchmarks/RESULTS.md: 34 ms for 16 frames and 33 ms for 8 on an
H200). A CUDA graph replays the whole pass with one launch. The UNet's weights do not change during
SDS and its input shapes change only at the render-size milestone, so one graph per input signature
is captured once and replayed every step.

:class:`CUDAGraphedForward` wraps any ``fn(*tensors, **static) -> Tensor``: each new signature
(tensor shapes, dtypes, devices and the static keyword values) is captured after ``warmup`` eager
calls on a side stream (which also lets Triton autotune outside the capture); a call then copies its
tensors into the graph's static inputs, replays, and returns a copy of the static output. Inputs on
the CPU are passed straight to ``fn``; a capture that fails falls back to ``fn`` with one warning
(``disabled_reason`` says why), so the option can never make a run fail.

Example (on a GPU; on the CPU it is a plain call)::

    >>> import torch
    >>> from iso3d.models.cuda_graph import CUDAGraphedForward
    >>> lin = torch.nn.Linear(4, 4)
    >>> graphed = CUDAGraphedForward(lin)
    >>> x = torch.randn(2, 4)
    >>> torch.equal(graphed(x), lin(x).detach())
    True
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

__all__ = ["CUDAGraphedForward"]


class _Graph:
    """One captured signature: the static inputs, the static output and the replay."""

    def __init__(self, inputs: list[torch.Tensor], output: torch.Tensor, replay: Callable[[], None]):
        self.inputs, self.output, self.replay = inputs, output, replay


def _capture_cuda_graph(fn: Callable, inputs: list[torch.Tensor], kwargs: dict, warmup: int) -> _Graph:
    """Warm ``fn`` up on a side stream, then capture one call on static copies of ``inputs``."""
    static = [x.clone() for x in inputs]
    side = torch.cuda.Stream(device=static[0].device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):  # also runs Triton's autotuning, which cannot happen inside a capture
            fn(*static, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn(*static, **kwargs)
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the captured function must return one tensor, got {type(output).__name__}")
    return _Graph(static, output, graph.replay)


class CUDAGraphedForward:
    """``fn(*tensors, **static)`` replayed from one CUDA graph per input signature (inference only).

    Args:
        fn: the forward pass; it must return one tensor, read only the given tensors and its own
            (unchanging) parameters, and do nothing that synchronizes with the host.
        warmup: eager calls before each capture.
        max_graphs: signatures kept; a further new signature runs eagerly (with one warning).
        capture: how one signature is captured (``_capture_cuda_graph``); with ``device_type``, tests
            replace it to check the cache on machines without a GPU.
        device_type: the device whose inputs are captured; inputs elsewhere go straight to ``fn``.

    Calls run under ``torch.no_grad()``; an input that requires grad is refused, since no
    gradient could flow through a replay. Weights changed in place are seen by later replays;
    modules or processors *replaced* after a capture are not: call :meth:`reset`.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], *, warmup: int = 2, max_graphs: int = 4,
                 capture: Callable[[Callable, list, dict, int], _Graph] = _capture_cuda_graph,
                 device_type: str = "cuda"):
        if not callable(fn):
            raise TypeError(f"CUDAGraphedForward: fn must be callable, got {type(fn).__name__}")
        if warmup < 1:
            raise ValueError(f"CUDAGraphedForward: warmup must be >= 1 (the capture needs warmed kernels), got {warmup}")
        if max_graphs < 1:
            raise ValueError(f"CUDAGraphedForward: max_graphs must be >= 1, got {max_graphs}")
        self.fn, self.warmup, self.max_graphs, self._capture = fn, warmup, max_graphs, capture
        self.device_type = device_type
        self.graphs: dict[tuple, _Graph] = {}
        self.disabled_reason: str | None = None
        self.replays = 0  # calls served from a graph (for tests and run.json)
        self._warned_full = False

    def reset(self) -> None:
        """Forget every captured graph (their memory is freed once nothing else holds it)."""
        self.graphs.clear()

    @torch.no_grad()
    def __call__(self, *tensors: torch.Tensor, **static) -> torch.Tensor:
        for i, x in enumerate(tensors):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"CUDAGraphedForward: positional argument {i} must be a tensor, got {type(x).__name__} "
                                "(pass non-tensor arguments by keyword)")
            if x.requires_grad:
                raise ValueError(f"CUDAGraphedForward: positional argument {i} requires grad; a graph replay is "
                                 "inference only (detach it, or call the function directly)")
        if not tensors or self.disabled_reason is not None or any(x.device.type != self.device_type for x in tensors):
            return self.fn(*tensors, **static)
        key = (tuple((tuple(x.shape), x.dtype, x.device) for x in tensors), tuple(sorted(static.items())))
        graph = self.graphs.get(key)
        if graph is None:
            if len(self.graphs) >= self.max_graphs:
                if not self._warned_full:
                    self._warned_full = True
                    warnings.warn(f"CUDAGraphedForward: more than max_graphs={self.max_graphs} input signatures; "
                                  "new ones run eagerly", stacklevel=2)
                return self.fn(*tensors, **static)
            try:
                graph = self._capture(self.fn, list(tensors), static, self.warmup)
            except Exception as exc:  # noqa: BLE001 — any failure means: run eagerly, never fail the run
                self.disabled_reason = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"CUDAGraphedForward: capture failed ({self.disabled_reason}); running eagerly",
                              stacklevel=2)
                return self.fn(*tensors, **static)
            self.graphs[key] = graph
        for dst, src in zip(graph.inputs, tensors):
            dst.copy_(src)
        graph.replay()
        self.replays += 1
        return graph.output.clone()  # the static output is overwritten by the next replay
