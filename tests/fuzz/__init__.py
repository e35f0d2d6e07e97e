"""Coverage-guided fuzzing of every decoder: ``python -m tests.fuzz [TARGET ...]``.

`engine` is the fuzzer, `targets` the decoders with their allowed errors, ``corpus/<target>/``
the seed inputs and ``crashes/`` every crash ever found (replayed by tests/unit/test_fuzz_smoke.py).
"""
