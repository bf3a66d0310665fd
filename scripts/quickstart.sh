#!/usr/bin/env bash
# kiln's main job on a fresh machine: set up, then train a CNN on scikit-learn's bundled digits and report accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python examples/digits.py "$@"
echo
echo "see your run: kiln ui   (.venv/bin/kiln ui, then open http://127.0.0.1:8765/)"
