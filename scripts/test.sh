#!/usr/bin/env bash
# Set up kiln with its dev extras, then run the test suite (GPU-only and slow tests are deselected; run them with
# `.venv/bin/python -m pytest -m gpu` on a GPU machine or `-m slow`). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# One OpenMP thread per process: tests start subprocesses beside each other on small CI machines, and
# oversubscribed OpenMP threads spin and slow everything down by large factors.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -m "not gpu and not slow" "$@"
