"""Replay a captured CUDA graph of an inference-only forward pass (the SDS step's UNet call).

Why: at the official size the UNet's classifier-free-guidance forward at 32² latents is bound by
kernel launches, not arithmetic (benchmarks/RESULTS.md: 34 ms for 16 frames and 33 ms for 8 on an
H200). A CUDA graph replays the whole pass with one launch. The UNet's weights do not change during
SDS and its input shapes change only at the render-size milestone, so one graph per input signature
is captured once and replayed every step.

:class:`CUDAGraphedForward` wraps any ``fn(*tensors, **static) -> Tensor``: each new signature
(tensor shapes, dtypes, device and the static keyword values) is captured after ``warmup`` eager
calls on a side stream of the inputs' device (which also lets Triton autotune outside the capture);
a call then copies its tensors into the graph's static inputs, replays, and returns a copy of the
static output. Inputs on the CPU (or spread over several devices) are passed straight to ``fn``. If
the capture itself fails (an operation that cannot be captured), the wrapper warns once, records why
in ``disabled_reason`` and runs ``fn`` eagerly from then on; errors of ``fn`` itself (during the
warm-up calls or eager calls) are raised as usual.

Each graph keeps its own memory pool (the intermediates of one forward pass) until :meth:`reset`.

Example (with CUDA tensors the second and later calls replay the graph; on the CPU this is a plain call)::

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

__all__ = ["CUDAGraphedForward", "CaptureFailed"]


class CaptureFailed(RuntimeError):
    """Recording the graph failed (not the function's own error): the wrapper falls back to eager calls."""


class _Graph:
    """One captured signature: the static inputs, the static output and the replay."""

    def __init__(self, inputs: list[torch.Tensor], output: torch.Tensor, replay: Callable[[], None]):
        self.inputs, self.output, self.replay = inputs, output, replay


def _capture_cuda_graph(fn: Callable, inputs: list[torch.Tensor], kwargs: dict, warmup: int) -> _Graph:
    """Warm ``fn`` up on a side stream, then capture one call on static copies of ``inputs``.

    Everything runs under the inputs' device (``torch.cuda.current_stream()`` and the capture stream
    are per device), so inputs on ``cuda:1`` are captured there even when ``cuda:0`` is current.
    """
    device = inputs[0].device
    with torch.cuda.device(device):
        static = [x.clone() for x in inputs]
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):  # also runs Triton's autotuning, which cannot happen inside a capture
                fn(*static, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=side):
                output = fn(*static, **kwargs)
        except Exception as exc:  # noqa: BLE001 — the same call just ran eagerly: the capture is what failed
            raise CaptureFailed(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"CUDAGraphedForward: the function must return one tensor, got {type(output).__name__}")

    def replay():
        with torch.cuda.device(device):
            graph.replay()

    return _Graph(static, output, replay)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CUDAGraphedForward:
    """``fn(*tensors, **static)`` replayed from one CUDA graph per input signature (inference only).

    Args:
        fn: the forward pass; it must return one tensor, read only the given tensors and its own
            (unchanging) parameters, and do nothing that synchronizes with the host.
        warmup: eager calls before each capture.
        max_graphs: signatures kept; a further new signature runs eagerly (with one warning).
        capture: how one signature is captured (``_capture_cuda_graph``; it raises
            :class:`CaptureFailed` when recording fails); with ``device_type``, tests replace it to
            check the cache on machines without a GPU.
        device_type: the device whose inputs are captured; inputs elsewhere go straight to ``fn``.

    Calls run under ``torch.no_grad()``; an input that requires grad is refused, since no gradient
    could flow through a replay. Keyword arguments are part of the signature and are baked into the
    graph: they must be hashable non-tensors (pass tensors positionally). Weights changed in place
    are seen by later replays; weights whose storage is *replaced* after a capture (``.to()``,
    ``.half()``, a device move, ``load_state_dict`` with ``assign=True``) or replaced modules and
    processors are not: call :meth:`reset`.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], *, warmup: int = 2, max_graphs: int = 4,
                 capture: Callable[[Callable, list, dict, int], _Graph] = _capture_cuda_graph,
                 device_type: str = "cuda"):
        if not callable(fn):
            raise TypeError(f"CUDAGraphedForward: fn must be callable, got {type(fn).__name__}")
        if not _is_int(warmup) or warmup < 1:
            raise ValueError(f"CUDAGraphedForward: warmup must be an int >= 1 (the capture needs warmed kernels), got {warmup!r}")
        if not _is_int(max_graphs) or max_graphs < 1:
            raise ValueError(f"CUDAGraphedForward: max_graphs must be an int >= 1, got {max_graphs!r}")
        self.fn, self.warmup, self.max_graphs, self._capture = fn, warmup, max_graphs, capture
        self.device_type = device_type
        self.graphs: dict[tuple, _Graph] = {}
        self.disabled_reason: str | None = None
        self.replays = 0  # calls served from a graph (for tests and run.json)
        self._warned_full = False

    def reset(self) -> None:
        """Forget every captured graph (their memory is freed once nothing else holds it) and any
        earlier capture failure, so the next call captures again."""
        self.graphs.clear()
        self.disabled_reason, self._warned_full = None, False

    def _signature(self, tensors: tuple, static: dict) -> tuple:
        for name, value in static.items():
            if isinstance(value, torch.Tensor):
                raise TypeError(f"CUDAGraphedForward: keyword argument {name!r} is a tensor; a graph would bake it in "
                                "as a constant (pass tensors positionally)")
            try:
                hash(value)
            except TypeError:
                raise TypeError(f"CUDAGraphedForward: keyword argument {name!r} must be hashable (it is part of the "
                                f"graph's signature), got {type(value).__name__}") from None
        return (tuple((tuple(x.shape), x.dtype, x.device) for x in tensors), tuple(sorted(static.items())))

    @torch.no_grad()
    def __call__(self, *tensors: torch.Tensor, **static) -> torch.Tensor:
        for i, x in enumerate(tensors):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"CUDAGraphedForward: positional argument {i} must be a tensor, got {type(x).__name__} "
                                "(pass non-tensor arguments by keyword)")
            if x.requires_grad:
                raise ValueError(f"CUDAGraphedForward: positional argument {i} requires grad; a graph replay is "
                                 "inference only (detach it, or call the function directly)")
        key = self._signature(tensors, static)
        if (not tensors or self.disabled_reason is not None or tensors[0].device.type != self.device_type
                or any(x.device != tensors[0].device for x in tensors)):
            return self.fn(*tensors, **static)
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
            except CaptureFailed as exc:
                self.disabled_reason = str(exc)
                warnings.warn(f"CUDAGraphedForward: capture failed ({self.disabled_reason}); running eagerly",
                              stacklevel=2)
                return self.fn(*tensors, **static)
            self.graphs[key] = graph
        for dst, src in zip(graph.inputs, tensors):
            dst.copy_(src)
        graph.replay()
        self.replays += 1
        return graph.output.clone()  # the static output is overwritten by the next replay
