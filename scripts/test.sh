#!/usr/bin/env bash
# Set up (if needed) and run the freqpure test suite on a fresh machine.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k spectral  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

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

# The HTML report test renders pages in headless Chromium (Debian package).
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi

ruff check src tests benchmarks
python -m pytest -q -p no:cacheprovider "$@"
