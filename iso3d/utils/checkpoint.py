"""Atomic checkpoints written by a background thread: the optimization loop pays for a host copy, not the disk.

Why: an official SDS run's checkpoint (the field's 12.6 M parameters and their two Adam moments) is
151 MB, and the release's schedule checkpoints every 100 of its 10,000 steps. ``torch.save`` releases
the GIL while it writes, so a thread hides the write. The state is copied to host memory first,
because the optimizer updates the live tensors in place. On the 2-core development machine the loop
paid 252 ms per checkpoint before and 72 ms now (``benchmarks/generate/bench_checkpoint.py``,
benchmarks/RESULTS.md).

Writes are atomic (a ``.tmp`` file, then a rename), one at a time and in order: :meth:`save` waits
for the previous write. An error in the thread is raised by the next :meth:`save` or :meth:`wait`.

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> writer = CheckpointWriter(path)
    >>> weights = torch.zeros(3)
    >>> writer.save({"weights": weights, "step": 1})
    >>> weights += 1  # the next optimizer step: the checkpoint keeps step 1's values
    >>> writer.wait()
    >>> torch.load(path)["weights"].tolist()
    [0.0, 0.0, 0.0]
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

__all__ = ["CheckpointWriter", "host_copy"]


def host_copy(state):
    """``state`` with every tensor copied to host memory and every list/tuple/dict rebuilt (nested), so
    that later in-place updates and appends in the caller do not reach it."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: host_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(host_copy(v) for v in state)
    return state


class CheckpointWriter:
    """Writes ``torch.save`` checkpoints to ``path`` atomically, in a background thread (``background=False``:
    in the caller's thread)."""

    def __init__(self, path: str | Path, *, background: bool = True):
        self.path = Path(path)
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict, *, wait: bool = False) -> None:
        """Snapshot ``state`` now and write it; ``wait=True``: return only once it is on disk."""
        self.wait()
        snapshot = host_copy(state)
        if not self.background or wait:
            self._write(snapshot)
            self.wait()
            return
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name="iso3d-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        """Block until the pending write is done; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise OSError(f"writing the checkpoint {self.path} failed: {error}") from error

    def _write(self, snapshot: dict) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            torch.save(snapshot, tmp)
            tmp.replace(self.path)  # atomic: an interrupted write never leaves a truncated checkpoint
        except BaseException as exc:  # noqa: BLE001 - surfaced by wait() in the caller's thread
            self._error = exc
