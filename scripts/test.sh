#!/usr/bin/env bash
# Set up (if needed) and run the freqpure test suite on a fresh machine.
#   bash scripts/test.sh              # full tier: every test (what .ci/run calls)
#   bash scripts/test.sh --fast       # fast tier: -m "not slow" (under 90 s on 2 idle cores; no Chromium)
#   bash scripts/test.sh -k spectral  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

FAST=0
ARGS=()
for arg in "$@"; do
    if [ "$arg" = "--fast" ]; then FAST=1; else ARGS+=("$arg"); fi
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch 2.13.0 is the CPU wheel on this project's machines; install it first so that no other
# requirement pulls a CUDA build.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[all,test]"

# The browser tier (the HTML report rendered in headless Chromium, Debian package) runs in the full
# tier only, so Chromium is installed only then.
if [ "$FAST" -eq 0 ] && ! command -v chromium >/dev/null 2>&1 && [ -z "${FREQPURE_CHROMIUM:-}" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi

ruff check src tests benchmarks
# One pytest worker per core (pytest-xdist), one torch thread per worker: the workers keep every core busy
# and never spin against each other. FREQPURE_TEST_WORKERS=0 runs in one process.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORKERS=(-n "${FREQPURE_TEST_WORKERS:-auto}")
[ "${FREQPURE_TEST_WORKERS:-auto}" = "0" ] && WORKERS=()
if [ "$FAST" -eq 1 ]; then
    python -m pytest -q -p no:cacheprovider -rs ${WORKERS[@]+"${WORKERS[@]}"} -m "not slow and not browser" "${ARGS[@]+"${ARGS[@]}"}"
else
    python -m pytest -q -p no:cacheprovider -rs ${WORKERS[@]+"${WORKERS[@]}"} "${ARGS[@]+"${ARGS[@]}"}"
fi
