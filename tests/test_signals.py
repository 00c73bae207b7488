"""StopSignals: handlers live only inside the block, only from the main thread."""

import os
import signal
import threading

import pytest

from tf_rmaml.signals import Interrupted, StopSignals


class _Record(StopSignals):
    def handle(self, name):
        self.signal = name


class _Raise(StopSignals):
    def handle(self, name):
        self.signal = name
        raise KeyboardInterrupt


def test_signals_reach_handle_inside_the_block_and_previous_handlers_return_after():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with _Record() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == "SIGINT"
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_raising_handler_ends_the_block_and_still_restores():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with _Raise() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal == "SIGTERM" and signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def run():
        with _Record():
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen["handler"] is before


def test_interrupted_carries_the_shell_exit_code_and_the_mask_is_left_open():
    stop = Interrupted("SIGTERM")
    assert isinstance(stop, KeyboardInterrupt) and stop.signal == "SIGTERM" and stop.exit_code == 143
    assert Interrupted("SIGINT").exit_code == 130
    with _Record():
        pass
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGTERM not in blocked and signal.SIGINT not in blocked


def test_training_stops_after_the_iteration_on_one_signal_and_at_once_on_a_second():
    from tf_rmaml.train import _StopRequest

    with pytest.raises(Interrupted) as raised:
        with _StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal == "SIGTERM"  # recorded; the loop finishes and saves the iteration
            os.kill(os.getpid(), signal.SIGINT)
    assert raised.value.signal == "SIGINT" and raised.value.exit_code == 130
