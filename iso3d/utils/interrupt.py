"""Ctrl-C that stops a loop between steps, so its checkpoint is a whole step and a resume is exact.

Why: Python raises ``KeyboardInterrupt`` at whatever bytecode runs when SIGINT arrives. In an SDS
loop that can be inside the occupancy-grid update or between ``step += 1`` and the step's records,
and a checkpoint taken there resumes into a different run. On an H100, ``iso3d generate`` was once
interrupted inside a checkpoint's snapshot (benchmarks/RESULTS.md, eighteenth session).

The first Ctrl-C only sets :attr:`StepInterrupt.requested`; the loop calls :meth:`StepInterrupt.check`
where a step ends, which raises ``KeyboardInterrupt`` there. A second Ctrl-C raises at once. Outside
the main thread (where Python delivers signals) nothing is changed and Ctrl-C behaves as usual.

Example::

    >>> import signal
    >>> done = 0
    >>> with StepInterrupt() as interrupt:
    ...     try:
    ...         for step in range(5):
    ...             if step == 2:
    ...                 signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C mid-step
    ...             done += 1  # the rest of the step still runs
    ...             interrupt.check()
    ...     except KeyboardInterrupt:
    ...         pass
    >>> done
    3
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

__all__ = ["StepInterrupt"]


class StepInterrupt:
    """Context manager deferring the first SIGINT to the next :meth:`check`.

    ``notice``: called once when the first Ctrl-C arrives (e.g. to print "stopping after this step").
    """

    def __init__(self, notice: Callable[[], None] | None = None):
        self.notice = notice
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> StepInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed since the loop began."""
        if self.requested:
            raise KeyboardInterrupt

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: the user does not want to wait for the step
            raise KeyboardInterrupt
        self.requested = True
        if self.notice is not None:
            self.notice()
