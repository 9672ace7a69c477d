#!/usr/bin/env bash
# dabench's one entry point for newcomers.
#
#   ./run_all.sh                 set up .venv, run the default suite (the paper's grid on MNIST,
#                                scaled for a 2-core CPU), write tables, figures and results/report.html
#   ./run_all.sh --quick         the same grid on a smaller subset: a smoke run of the whole pipeline
#   ./run_all.sh --suite NAME    another suite of harness/suites.py (full, scaling, methods, paper),
#                                e.g. --suite paper --data-root DIR --executor slurm
#   ./run_all.sh --tests [ARGS]  set up .venv, then run every test, the slow ones too (ARGS go to pytest)
#
# Set-up creates .venv (or reuses it) and installs this project with its pinned dependencies
# (pyproject.toml) into it; it reinstalls only when pyproject.toml changed. Environment:
#   PYTHON=python3.11   interpreter used to create the venv
#   DABENCH_VENV=.venv  where the venv lives
#   any other argument  is passed to `dabench suite` (e.g. --force, --results-dir DIR)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${DABENCH_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        echo "run_all.sh: needs Python 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=python3.11" >&2
        exit 2
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "run_all.sh: creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.dabench-install-stamp"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "run_all.sh: installing the project and its pinned dependencies into $VENV (first time: several minutes; log: $VENV/install.log)" >&2
        local log="$VENV/install.log"
        if ! { "$VENV/bin/python" -m pip install --upgrade pip \
               && "$VENV/bin/python" -m pip install -e '.[test]'; } > "$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "run_all.sh: installation failed; the full pip log is in $log" >&2
            exit 1
        fi
        echo "$want" > "$stamp"
    fi
}

mode=suite
suite=default
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tests) mode=tests; shift; args=("$@"); break ;;
        --quick) suite=quick; shift ;;
        --suite)
            [ $# -ge 2 ] || { echo "run_all.sh: --suite needs a name (default, quick, full, scaling, methods, paper)" >&2; exit 2; }
            suite="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done

setup
if [ "$mode" = tests ]; then
    # every test, the slow ones too (pyproject.toml deselects them for a bare `pytest`); a later -m wins
    exec "$VENV/bin/python" -m pytest -m "" "${args[@]}"
fi
"$VENV/bin/dabench" suite "$suite" "${args[@]}"
