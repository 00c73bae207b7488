"""Stopping cleanly on SIGINT or SIGTERM inside a `with` block (no TensorFlow import).

The handler only records the request; the loop checks it at a point where stopping is safe and
raises there. Raising from the handler itself is not safe: Python runs it at whatever bytecode
the main thread is at, and the code it interrupts (TensorFlow's, absl's, a `__del__`) can swallow
the exception, so the stop would be lost (it was, in 1 of 4 tries of an evaluation).
"""

import signal
import threading

from absl import logging

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(name):
    """The shell's exit code of a process ended by signal `name` ("SIGTERM"): 128 + its number."""
    return 128 + getattr(signal, name)


class Interrupted(KeyboardInterrupt):
    """A stop requested by a signal; `signal` is its name ("SIGTERM") and `exit_code` the shell's
    code of a process it ended (`exit_code(name)`)."""

    def __init__(self, name):
        super().__init__(name)
        self.signal = name
        self.exit_code = exit_code(name)


class StopRequest:
    """A context manager that catches SIGINT and SIGTERM inside its block and restores the
    previous handlers after it.

    The first signal sets `signal` (its name; None until then) and logs `notice % name`; the loop
    checks `signal` (or calls `raise_if_requested()`) where it can stop safely. A second signal
    raises `Interrupted` at once. Signals can only be caught from the main thread: elsewhere
    nothing is installed and the default handlers stay.
    """

    def __init__(self, notice="%s: stopping at the next safe point (send it again to stop at once)."):
        self.notice, self.signal, self._previous = notice, None, {}

    def raise_if_requested(self):
        if self.signal is not None:
            raise Interrupted(self.signal)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal is not None:
            raise Interrupted(name)
        self.signal = name
        logging.warning(self.notice, name)

    def __exit__(self, *exc):
        # Blocked while the handlers are swapped back, a signal arriving now waits and then goes to
        # the previous handler, instead of to this one with one handler restored and one not.
        block = hasattr(signal, "pthread_sigmask") and bool(self._previous)
        if block:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for sig, handler in self._previous.items():
                # None: a handler installed from C, which Python cannot reinstall; the default instead.
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
            self._previous = {}
        finally:
            if block:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        return False
