"""StepInterrupt: the first Ctrl-C waits for the step's end, the second stops at once, handlers restored."""

import signal
import threading

import pytest

from iso3d.utils.interrupt import StepInterrupt


def test_first_ctrl_c_is_deferred_to_check():
    notices = []
    with StepInterrupt(lambda: notices.append(1)) as interrupt:
        interrupt.check()  # nothing pressed yet: no error
        signal.raise_signal(signal.SIGINT)
        assert interrupt.requested and notices == [1]  # still here: the step goes on
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()


def test_second_ctrl_c_raises_at_once():
    with StepInterrupt() as interrupt:
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert interrupt.requested


def test_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(ValueError):
        with StepInterrupt():
            assert signal.getsignal(signal.SIGINT) is not before
            raise ValueError("the loop failed")
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # and Ctrl-C raises as before
        signal.raise_signal(signal.SIGINT)


def test_outside_the_main_thread_nothing_changes():
    before, seen = signal.getsignal(signal.SIGINT), []

    def loop():
        with StepInterrupt() as interrupt:
            seen.append((signal.getsignal(signal.SIGINT) is before, interrupt.requested))
            interrupt.check()

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    assert seen == [(True, False)]
