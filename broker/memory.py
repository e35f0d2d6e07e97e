"""glibc malloc settings for processes that pass big message bodies around.

The router, the actors and every Bus process allocate and free big buffers all the time: a
ZeroMQ frame per message received, msgpack's buffers per message sent. By default glibc serves
a request of 128 KiB or more (a threshold that then adapts, up to 32 MiB) with its own ``mmap``
and gives it back with ``munmap`` when it is freed, and it returns the free top of its heap to
the kernel once that exceeds 128 KiB. Each new body then costs fresh zero-filled pages, a page
fault for every 4 KiB of it. `tune_malloc` keeps requests below `MMAP_THRESHOLD` on the heap and
lets the heap keep up to `TRIM_THRESHOLD` free at its top, so the memory of a freed body serves
the next one without going back to the kernel.

Memory stays bounded: a freed body's memory is reused for the next ones instead of going back
to the kernel, so a process holds about the most it ever kept at once (bounded by the journal's
and the outbox's byte bounds) rather than what it keeps now, and the heap's free top is returned
once it exceeds `TRIM_THRESHOLD`. The figures are in docs/bench.md ("Big payloads").

Only on glibc: elsewhere (musl, macOS) nothing happens. A ``glibc.malloc.`` setting in
``GLIBC_TUNABLES`` is the operator's choice and is left as it is.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from typing import Final

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD: Final = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 32 * 1024 * 1024  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD: Final = 256 * 1024 * 1024

_done = False


def tune_malloc() -> bool:
    """Apply the thresholds once per process; True when glibc took them (now or before)."""
    global _done
    if _done:
        return True
    if platform.libc_ver()[0] != "glibc" or "glibc.malloc." in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _done:
        log.debug("mallopt refused the thresholds; glibc's defaults stay")
    return _done
