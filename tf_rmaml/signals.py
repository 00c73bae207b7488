"""Catching SIGINT and SIGTERM for the length of a `with` block (no TensorFlow import)."""

import signal
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by a handler to stop at once; `signal` is the name of the signal ("SIGTERM") and
    `exit_code` the shell's code of a process it ended (128 + its number)."""

    def __init__(self, name):
        super().__init__(name)
        self.signal = name
        self.exit_code = 128 + getattr(signal, name)


class StopSignals:
    """A context manager that routes SIGINT and SIGTERM to `handle(name)` inside its block and
    restores the previous handlers after it.

    Signals can only be caught from the main thread: elsewhere nothing is installed (and the
    default handlers stay). Subclasses decide what a signal does in `handle` (and may record it
    in `signal`, None until then); raising `Interrupted(name)` there ends the block.
    """

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        self.handle(signal.Signals(signum).name)

    def handle(self, name):
        raise NotImplementedError

    def __exit__(self, *exc):
        # Blocked while the handlers are swapped back, a signal arriving now waits and then goes to
        # the previous handler, instead of to `handle` with one handler restored and one not.
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
