"""A small coverage-guided mutation fuzzer in pure Python (atheris is not available here).

How it works, per target (see `tests.fuzz.targets.Target`):

1. Coverage is the set of line-to-line arcs executed in the decoder modules (`WATCHED`: every
   file of ``actors/protocols/`` and ``broker/wire/envelope.py``). `sys.settrace` installs a global
   tracer that returns a local (line) tracer only for frames whose code lives in those files, so
   the interpreter does not pay for line events anywhere else (json, struct and msgpack run at
   full speed; their C parts are never traced anyway).
2. The corpus starts with the seed files of ``tests/fuzz/corpus/<target>/``. Each round picks a
   corpus entry, applies 1-4 stacked mutations (bit flip, byte replace/insert/delete, chunk
   duplication, splice with another entry, dictionary token insert/overwrite, interesting 32-bit
   values in both byte orders) and runs the target. An input that adds an arc joins the corpus.
3. An input whose run raises anything but the target's `allowed` errors is a crash; so is a run
   that takes longer than `hang_seconds` of traced decoder time (`Hang`, checked from the tracer,
   so a decoder stuck in a loop or building a huge structure is interrupted). The crash is
   minimised (delta debugging: drop ever smaller chunks while the same exception type and
   location still happen), saved as ``tests/fuzz/crashes/<target>-<sha1>.bin`` and reported;
   the target stops there.

Everything is deterministic for a given ``seed`` and ``runs``; ``seconds`` only caps wall time.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
CRASH_DIR = FUZZ_DIR / "crashes"
WATCHED: frozenset[str] = frozenset(
    [str(p) for p in (ROOT / "actors" / "protocols").glob("*.py")]
    + [str(ROOT / "broker" / "wire" / "envelope.py")])

INTERESTING_32 = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 124, 128, 132, 1024, 1025, 0x7FFF,
                  0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0xFEEDFACE)
MINIMISE_HANG_SECONDS = 0.25
INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x2A, 0x3B, 0x24, 0x5C, 0x22, 0x2C)


class Hang(BaseException):
    """A run exceeded its time budget (a BaseException, so ``except Exception`` in the code
    under test cannot swallow it)."""


@dataclass(frozen=True)
class Crash:
    """A minimised crashing input and what it raised."""

    target: str
    data: bytes
    error: str  # "IndexError: ... at file:line"
    path: Path


@dataclass
class Result:
    """What one target's session did: `arcs` counts distinct arcs seen (seeds included)."""

    target: str
    runs: int = 0
    seed_arcs: int = 0
    arcs: int = 0
    corpus: int = 0
    seconds: float = 0.0
    crash: Crash | None = None


@dataclass(frozen=True)
class Target:
    """One decoder under test: `run` takes the raw input and may only raise `allowed`."""

    name: str
    run: Callable[[bytes], Any]
    allowed: tuple[type[BaseException], ...]
    tokens: tuple[bytes, ...] = ()
    max_len: int = 2048
    doc: str = ""


@dataclass
class _Tracer:
    """Collects arcs (file, previous line, line) of watched frames into `arcs`."""

    deadline: float = 0.0
    arcs: set[tuple[str, int, int]] = field(default_factory=set)
    _events: int = 0

    def global_trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if filename not in WATCHED:
            return None
        prev = -frame.f_code.co_firstlineno  # entry arc: from "function start"
        arcs = self.arcs

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal prev
            if event == "line":
                line = frame.f_lineno
                arcs.add((filename, prev, line))
                prev = line
                self._events += 1
                if not self._events & 0x3FF and time.monotonic() > self.deadline:
                    raise Hang("decoder still running after its time budget")
            elif event == "return":
                arcs.add((filename, prev, 0))
            return local

        return local


def _location(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of the project (where the error surfaced)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if str(ROOT) in f.filename and "/tests/fuzz/" not in f.filename]
    if not frames:
        frames = list(traceback.extract_tb(exc.__traceback__))
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).resolve().relative_to(ROOT)}:{last.lineno}"


def execute(target: Target, data: bytes, hang_seconds: float = 2.0
            ) -> tuple[set[tuple[str, int, int]], BaseException | None]:
    """Run `target` on `data` under the tracer: (arcs, the crash exception or None)."""
    tracer = _Tracer(deadline=time.monotonic() + hang_seconds)
    old = sys.gettrace()
    sys.settrace(tracer.global_trace)
    try:
        target.run(data)
    except target.allowed:
        error: BaseException | None = None
    except (Exception, Hang) as exc:  # any other exception IS the finding
        error = exc
    else:
        error = None
    finally:
        sys.settrace(old)
    return tracer.arcs, error


def signature(exc: BaseException) -> str:
    """What makes two crashes "the same": exception type and project location."""
    return f"{type(exc).__name__} at {_location(exc)}"


class Mutator:
    """Stacked byte-level mutations drawn from one seeded `random.Random`."""

    def __init__(self, rng: random.Random, tokens: Iterable[bytes], max_len: int) -> None:
        self.rng = rng
        self.tokens = tuple(tokens)
        self.max_len = max_len

    def mutate(self, data: bytes, corpus: list[bytes]) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            self._one(out, corpus)
        return bytes(out[:self.max_len])

    def _one(self, out: bytearray, corpus: list[bytes]) -> None:
        rng = self.rng
        n = len(out)
        choice = rng.randrange(10)
        if n == 0 or choice == 0:  # insert random bytes
            pos = rng.randint(0, n)
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif choice == 1:  # bit flip
            pos = rng.randrange(n)
            out[pos] ^= 1 << rng.randrange(8)
        elif choice == 2:  # replace a byte with a random or an interesting one
            out[rng.randrange(n)] = (rng.choice(INTERESTING_8) if rng.random() < 0.5
                                     else rng.randrange(256))
        elif choice == 3:  # delete a range
            pos = rng.randrange(n)
            del out[pos:pos + rng.randint(1, max(1, min(16, n - pos)))]
        elif choice == 4:  # duplicate a chunk
            pos = rng.randrange(n)
            chunk = out[pos:pos + rng.randint(1, 32)]
            at = rng.randint(0, n)
            out[at:at] = chunk * rng.randint(1, 3)
        elif choice == 5 and len(corpus) > 1:  # splice: our head + another entry's tail
            other = rng.choice(corpus)
            cut, cut2 = rng.randint(0, n), rng.randint(0, len(other))
            out[cut:] = other[cut2:]
        elif choice in (6, 7) and self.tokens:  # dictionary token: insert or overwrite
            token = rng.choice(self.tokens)
            pos = rng.randint(0, n)
            if choice == 6:
                out[pos:pos] = token
            else:
                out[pos:pos + len(token)] = token
        elif choice == 8 and n >= 4:  # interesting 32-bit value, aligned, either byte order
            pos = rng.randrange(0, n - 3) & ~3
            value = rng.choice(INTERESTING_32)
            out[pos:pos + 4] = value.to_bytes(4, rng.choice(("little", "big")))
        else:  # arithmetic on a byte
            pos = rng.randrange(n)
            out[pos] = (out[pos] + rng.randint(-16, 16)) & 0xFF


def minimise(target: Target, data: bytes, sig: str, budget: int = 3000,
             hang_seconds: float = 2.0, seconds: float = 30.0) -> bytes:
    """Delta debugging: remove chunks (halves, quarters ... single bytes) while the crash keeps
    its signature; at most `budget` executions and `seconds` of wall time (hangs are slow)."""
    runs = 0
    deadline = time.monotonic() + seconds

    def still(candidate: bytes) -> bool:
        nonlocal runs
        runs += 1
        _, exc = execute(target, candidate, hang_seconds)
        return exc is not None and signature(exc) == sig

    def spent() -> bool:
        return runs >= budget or time.monotonic() > deadline

    size = max(1, len(data) // 2)
    while size >= 1 and not spent():
        pos, shrunk = 0, False
        while pos < len(data) and not spent():
            candidate = data[:pos] + data[pos + size:]
            if still(candidate):
                data, shrunk = candidate, True
            else:
                pos += size
        if not shrunk:
            size //= 2
    return data


def seeds_of(target: Target) -> list[bytes]:
    folder = CORPUS_DIR / target.name
    return [p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()]


def save_crash(target: Target, data: bytes, error: str) -> Crash:
    CRASH_DIR.mkdir(exist_ok=True)
    path = CRASH_DIR / f"{target.name}-{hashlib.sha1(data).hexdigest()}.bin"
    path.write_bytes(data)
    return Crash(target.name, data, error, path)


def fuzz(target: Target, *, seconds: float, runs: int | None = None, seed: int = 0,
         hang_seconds: float = 2.0, save: bool = True) -> Result:
    """Fuzz one target until `seconds` pass or `runs` inputs ran, or it crashes."""
    rng = random.Random(f"{seed}:{target.name}")
    mutator = Mutator(rng, target.tokens, target.max_len)
    result = Result(target.name)
    start = time.monotonic()
    deadline = start + seconds
    seen: set[tuple[str, int, int]] = set()
    corpus: list[bytes] = []
    candidates = seeds_of(target) or [b""]
    pending: list[bytes] = list(candidates)
    seeding = True
    while True:
        if pending:
            data = pending.pop(0)
        else:
            if seeding:
                seeding, result.seed_arcs = False, len(seen)
            if time.monotonic() >= deadline or (runs is not None and result.runs >= runs):
                break
            data = mutator.mutate(rng.choice(corpus or candidates), corpus)
        arcs, exc = execute(target, data, hang_seconds)
        result.runs += 1
        if exc is not None:
            sig = signature(exc)
            # a hang is minimised with a short budget (valid inputs run in milliseconds)
            budget = min(hang_seconds, MINIMISE_HANG_SECONDS) if isinstance(exc, Hang) \
                else hang_seconds
            small = minimise(target, data, sig, hang_seconds=budget)
            _, again = execute(target, small, hang_seconds)
            error = f"{sig}: {again if again is not None else exc}"
            result.crash = (save_crash(target, small, error) if save
                            else Crash(target.name, small, error, Path()))
            break
        if not arcs <= seen:
            seen |= arcs
            corpus.append(data)
    if seeding:
        result.seed_arcs = len(seen)
    result.arcs, result.corpus = len(seen), len(corpus)
    result.seconds = time.monotonic() - start
    return result
