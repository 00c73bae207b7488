"""StopRequest: the first signal is recorded, a second raises; handlers live only inside the block,
only from the main thread."""

import os
import signal
import threading

import pytest

from tf_rmaml.signals import Interrupted, StopRequest


def _handlers():
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def test_the_first_signal_is_recorded_a_second_stops_at_once_and_handlers_return_after():
    before = _handlers()
    with pytest.raises(Interrupted) as raised:
        with StopRequest() as stop:
            stop.raise_if_requested()  # nothing requested yet
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal == "SIGTERM"  # recorded, nothing raised: the loop stops where it is safe
            with pytest.raises(Interrupted, match="SIGTERM"):
                stop.raise_if_requested()
            os.kill(os.getpid(), signal.SIGINT)
    assert raised.value.signal == "SIGINT" and raised.value.exit_code == 130
    assert stop.signal == "SIGTERM" and _handlers() == before


def test_interrupted_carries_the_shell_exit_code_and_the_mask_is_left_open():
    stop = Interrupted("SIGTERM")
    assert isinstance(stop, KeyboardInterrupt) and stop.signal == "SIGTERM" and stop.exit_code == 143
    with StopRequest():
        pass
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGTERM not in blocked and signal.SIGINT not in blocked


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def run():
        with StopRequest():
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen["handler"] is before
