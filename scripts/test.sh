#!/usr/bin/env bash
# The project's checks: ruff, mypy, the import contracts (lint-imports, in pyproject.toml), then
# pytest over tests/ except tests/bench (benchmarks).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k envelope -x`, or
# `bash scripts/test.sh tests/unit` for the quick edit-test loop).
# Without arguments: tests/unit and tests/integration on $SCTL_TEST_WORKERS pytest-xdist workers
# (default 2; 0 = in this process; --dist loadfile: a module's tests stay on one worker),
# then tests/system in this process: they start whole sites under supervisord on the default
# site's fixed ports, and their timings assume nothing else runs beside them.
# Every step runs even if an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh || { echo "test: FAILED (setup)"; exit 1; }

failed=()
step() {
    local name="$1"
    shift
    echo "== $name"
    "$@"
    local rc=$?
    if [[ "$name" = pytest* ]] && [ "$rc" = 5 ]; then
        echo "test: pytest collected no tests: the test tree is missing or every test was" \
             "deselected; this is a failure"
    fi
    if [ "$rc" != 0 ]; then
        failed+=("$name (exit $rc)")
    fi
}

step ruff .venv/bin/ruff check .
step mypy .venv/bin/mypy
step lint-imports .venv/bin/lint-imports --no-cache
pytest=(.venv/bin/python -m pytest -p no:cacheprovider --ignore=tests/bench)
if [ $# -gt 0 ]; then
    step pytest "${pytest[@]}" tests "$@"
else
    workers="${SCTL_TEST_WORKERS:-2}"
    parallel=()
    [ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
    step pytest "${pytest[@]}" "${parallel[@]}" --ignore=tests/system tests
    step pytest-system "${pytest[@]}" tests/system
fi

if [ "${#failed[@]}" -eq 0 ]; then
    echo "test: OK (ruff, mypy, lint-imports, pytest)"
else
    echo "test: FAILED: $(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')"
    exit 1
fi
