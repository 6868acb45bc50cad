"""Give memory back to the system once a burst is over.

Big /classify bodies leave glibc's heap holding hundreds of MB that nothing uses any more (RSS 194 -> 639 MB
after a burst, and it stayed). A process that has been idle for 2 s after being busy runs a full garbage
collection and `malloc_trim(0)`. Both the worker (JSON bodies) and LitServe's classifier process (the
batches it unpickles) use it.
"""
from __future__ import annotations

import ctypes
import gc
import threading
import time


class MemoryTrimmer:
    """Call it often with whether the process is busy; it trims after 2 s of idleness that follow work."""

    def __init__(self):
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: the collection alone
            self._trim = None
        self.busy_since_trim, self.idle_since = False, time.monotonic()

    def __call__(self, busy: bool) -> None:
        now = time.monotonic()
        if busy:
            self.busy_since_trim, self.idle_since = True, now
        elif self.busy_since_trim and now - self.idle_since > 2.0:
            self.busy_since_trim = False
            gc.collect()
            if self._trim is not None:
                self._trim(0)


def trim_when_idle(last_work: list[float], period: float = 1.0) -> threading.Thread:
    """A daemon thread for a process whose work is done elsewhere: `last_work[0]` holds the monotonic time
    of its last piece of work."""
    trim = MemoryTrimmer()

    def loop():
        while True:
            time.sleep(period)
            trim(busy=time.monotonic() - last_work[0] < period)
    t = threading.Thread(target=loop, name="memory-trim", daemon=True)
    t.start()
    return t
