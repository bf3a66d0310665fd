#!/usr/bin/env bash
# Set kiln up in ./.venv on a fresh machine: the CPU build of torch first (unless the venv already has a torch),
# then kiln itself, editable, with the extras named in $1 (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  echo "kiln setup: creating .venv"
  "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # A plain `torch` requirement would pull the CUDA build and several GB of CUDA packages; 2.13.0 is the CPU wheel.
  echo "kiln setup: installing torch==2.13.0 (CPU)"
  .venv/bin/pip install --quiet "torch==2.13.0"
fi
if ! command -v espeak-ng >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # examples/keyword_spotting.py synthesises its speech with espeak-ng (it falls back to tones without it).
  echo "kiln setup: installing espeak-ng (Debian package)"
  apt-get install -y -q espeak-ng >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q espeak-ng >/dev/null 2>&1; } \
    || echo "kiln setup: could not install espeak-ng; examples/keyword_spotting.py will use synthesised tones"
fi
echo "kiln setup: installing kiln[$extras]"
.venv/bin/pip install --quiet -e ".[$extras]"
if [[ ",$extras," == *",dev,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  # tests/ui drive a real browser: Debian's chromium through Playwright (Playwright's own download is not used).
  echo "kiln setup: installing chromium (Debian) for the browser tests"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq chromium >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null; }
fi
if [[ ",$extras," == *",dev,"* ]] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  # tests/store run against a throwaway PostgreSQL 15 cluster (tests/store/postgres.py): the server from Debian.
  echo "kiln setup: installing PostgreSQL (Debian) for the store tests"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq postgresql >/dev/null || { $sudo apt-get update -qq && $sudo apt-get install -y -qq postgresql >/dev/null; }
fi
