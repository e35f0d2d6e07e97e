"""`broker.memory.tune_malloc`: freed big buffers serve the next ones without new pages.

Each case runs in a fresh interpreter: the thresholds are process-wide and stay set."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from broker import memory
from tests.support.stack import ROOT

# 64 buffers of 1 MiB, freed, then 64 again: the page faults of the second round. glibc's
# defaults map the first round (each buffer on its own, unmapped when freed) and take the
# second from fresh heap pages; with the thresholds the second round reuses the first's memory.
PROBE = textwrap.dedent("""
    import resource, sys
    from broker.memory import tune_malloc
    tuned = tune_malloc() if sys.argv[1] == "tune" else False
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bufs = [bytearray(1 << 20) for _ in range(64)]
    del bufs
    before = faults()
    bufs = [bytearray(1 << 20) for _ in range(64)]
    print(tuned, faults() - before)
""")
PAGES = 64 * (1 << 20) // 4096

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


def probe(mode: str, **env: str) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    environ["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    tuned, faults = done.stdout.split()
    return tuned == "True", int(faults)


@glibc
def test_freed_big_buffers_are_reused_without_page_faults() -> None:
    tuned, faults = probe("tune")
    assert tuned and faults < PAGES // 10
    tuned, faults = probe("plain")  # the probe tells the two apart
    assert not tuned and faults > PAGES // 2


@glibc
def test_a_malloc_setting_of_the_operator_is_left_as_it_is() -> None:
    tuned, faults = probe("tune", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000")
    assert not tuned and faults > PAGES // 2


def test_nothing_happens_on_another_libc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    monkeypatch.setattr(ctypes, "CDLL", None)  # would raise if it were called
    assert memory.tune_malloc() is False
