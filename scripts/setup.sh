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
apt_install() {  # a Debian package, as root or through sudo; the package lists are refreshed only when needed
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"  # never wait for a password prompt
  $sudo apt-get install -y -qq "$1" >/dev/null 2>&1 || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq "$1" >/dev/null; }
}
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  # examples/keyword_spotting.py synthesises its speech with espeak-ng (it falls back to tones without it).
  echo "kiln setup: installing espeak-ng (Debian package)"
  apt_install espeak-ng || echo "kiln setup: could not install espeak-ng; examples/keyword_spotting.py will use synthesised tones"
fi
echo "kiln setup: installing kiln[$extras]"
.venv/bin/pip install --quiet -e ".[$extras]"
if [[ ",$extras," == *",dev,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  # tests/ui drive a real browser: Debian's chromium through Playwright (Playwright's own download is not used).
  echo "kiln setup: installing chromium (Debian) for the browser tests"
  apt_install chromium
fi
if [[ ",$extras," == *",dev,"* ]] && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  # tests/store run against a throwaway PostgreSQL 15 cluster (tests/store/postgres.py): the server from Debian.
  echo "kiln setup: installing PostgreSQL (Debian) for the store tests"
  apt_install postgresql
fi
