"""Catching SIGINT and SIGTERM for the length of a `with` block (no TensorFlow import)."""

import signal
import threading


class StopSignals:
    """A context manager that routes SIGINT and SIGTERM to `handle(name)` inside its block and
    restores the previous handlers after it; `signal` is the name of the last one received.

    Signals can only be caught from the main thread: elsewhere nothing is installed (and the
    default handlers stay). Subclasses decide what a signal does in `handle`.
    """

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        self.handle(signal.Signals(signum).name)

    def handle(self, name):
        raise NotImplementedError

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
