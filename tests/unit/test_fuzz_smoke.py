"""The bounded CI run of the coverage-guided fuzzer (tests/fuzz), and the crash archive replay.

Each target runs a fixed number of inputs with a fixed seed, so the run is deterministic: the
same inputs, the same coverage, on any machine, however loaded (a wall-time cap only guards
against a pathological slowdown). The longer exploratory run is ``python -m tests.fuzz``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import engine
from tests.fuzz.engine import CRASH_DIR, Target, execute, fuzz, minimise, signature
from tests.fuzz.targets import TARGETS

SEED = 11
# inputs per target, about 1.5 s each on an idle core (stream targets cost more per input)
RUNS = {"springcore_stream": 800, "cmd_tcp_receiver": 400, "spec_stream_le": 2000,
        "spec_stream_be": 2000}
DEFAULT_RUNS = 6000
CAP_SECONDS = 40.0  # never reached unless the machine is starved; the pytest timeout is 60 s


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_runs_without_crash_and_grows_coverage(name: str) -> None:
    runs = RUNS.get(name, DEFAULT_RUNS)
    result = fuzz(TARGETS[name], seconds=CAP_SECONDS, runs=runs, seed=SEED, save=False)
    assert result.crash is None, f"{name}: {result.crash.error} on {result.crash.data!r}"
    assert result.runs >= runs, f"{name}: only {result.runs} runs before the wall-time cap"
    assert result.seed_arcs > 0, f"{name}: the seeds cover nothing (tracer not watching?)"
    assert result.arcs > result.seed_arcs, f"{name}: mutations found no new arc"
    assert result.corpus >= 2


def test_same_seed_same_session() -> None:
    """Determinism: the whole session (runs, coverage, corpus) repeats for a seed."""
    target = TARGETS["springcore_line"]
    first = fuzz(target, seconds=CAP_SECONDS, runs=150, seed=3, save=False)
    second = fuzz(target, seconds=CAP_SECONDS, runs=150, seed=3, save=False)
    assert (first.runs, first.arcs, first.corpus) == (second.runs, second.arcs, second.corpus)


def _toy(data: bytes) -> None:
    """A deliberately buggy decoder: a length byte after ``$L`` is trusted, so ``$L`` with a
    count past the end indexes out of range (an IndexError, not the allowed ValueError)."""
    if len(data) < 3:
        raise ValueError("short")
    if data[:2] != b"$L":
        raise ValueError("no magic")
    count = data[2]
    body = data[3:]
    if count > 40:
        _ = body[count]  # the bug: no bounds check
    raise ValueError("ok")


def test_engine_finds_minimises_and_saves_a_crash(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine must find the toy's IndexError from a valid seed within its budget, minimise
    it to the 3 bytes that matter and save it under its sha1."""
    seeds = tmp_path / "corpus" / "toy"
    seeds.mkdir(parents=True)
    (seeds / "ok").write_bytes(b"$L\x05hello")
    monkeypatch.setattr(engine, "CORPUS_DIR", tmp_path / "corpus")
    monkeypatch.setattr(engine, "CRASH_DIR", tmp_path / "crashes")
    monkeypatch.setattr(engine, "WATCHED", engine.WATCHED | {__file__})
    toy = Target("toy", _toy, (ValueError,), tokens=(b"$L",))
    result = fuzz(toy, seconds=CAP_SECONDS, runs=5000, seed=SEED)
    assert result.crash is not None, f"no crash found in {result.runs} runs"
    crash = result.crash
    assert crash.error.startswith("IndexError at tests/unit/test_fuzz_smoke.py:")
    assert crash.data[:2] == b"$L" and crash.data[2] > 40 and len(crash.data) == 3
    assert crash.path.parent == tmp_path / "crashes" and crash.path.read_bytes() == crash.data
    assert crash.path.name.startswith("toy-") and crash.path.suffix == ".bin"


def test_a_hang_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder looping in watched code is interrupted by the tracer and reported as Hang."""
    monkeypatch.setattr(engine, "WATCHED", engine.WATCHED | {__file__})

    def spin(data: bytes) -> None:
        while data:
            pass

    target = Target("spin", spin, (ValueError,))
    _, exc = execute(target, b"x", hang_seconds=0.2)
    assert isinstance(exc, engine.Hang)
    assert execute(target, b"", hang_seconds=0.2)[1] is None
    assert len(minimise(target, b"abc", signature(exc), hang_seconds=0.2)) == 1


def test_cli_runs_named_targets_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fuzz.__main__ import main

    assert main(["cmd_tcp_hex", "--runs", "50", "--seconds", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "cmd_tcp_hex" in out and " ok" in out
    with pytest.raises(SystemExit) as exc:
        main(["no_such_target"])
    assert exc.value.code == 2


CRASHES = sorted(CRASH_DIR.glob("*.bin")) if CRASH_DIR.is_dir() else []


@pytest.mark.parametrize("path", CRASHES, ids=[p.name for p in CRASHES])
def test_recorded_crash_now_decodes_or_raises_the_allowed_error(path: Path) -> None:
    """Every crash the fuzzer ever found stays fixed: its input gives a valid result or the
    target's allowed error."""
    name = path.stem.rsplit("-", 1)[0]
    assert name in TARGETS, f"{path.name}: unknown target {name}"
    _, exc = execute(TARGETS[name], path.read_bytes())
    assert exc is None, f"{path.name}: {signature(exc)}: {exc}"


def test_every_target_has_seeds() -> None:
    for name in TARGETS:
        assert engine.seeds_of(TARGETS[name]), f"no seeds in tests/fuzz/corpus/{name}/"
