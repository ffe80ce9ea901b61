#!/usr/bin/env bash
# Set up circuitlab in ./.venv (idempotent) and run a job:
#   bash run.sh demo [args]   the main job: full analysis of a bundled model -> HTML report
#   bash run.sh test [args]   the test suite (pytest)
#   bash run.sh setup         only set up
#   bash run.sh <command...>  any command inside the environment (e.g. circuitlab sweep --help)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${CIRCUITLAB_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.circuitlab-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      # A GPU machine: the default (CUDA) build from PyPI.
      "$VPY" -m pip install "torch>=2.1"
    elif ls ${PIP_FIND_LINKS:-/opt/wheels}/torch-2.13.0*cpu* >/dev/null 2>&1; then
      # CPU-only with a local CPU wheel: take it instead of a multi-GB CUDA build.
      "$VPY" -m pip install "torch==2.13.0"
    else
      # CPU-only elsewhere: PyTorch's CPU index, falling back to PyPI.
      "$VPY" -m pip install "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu \
        || "$VPY" -m pip install "torch>=2.1"
    fi
  fi
  "$VPY" -m pip install -e ".[dev]"
  touch "$stamp"
fi

job=${1:-demo}
[ $# -gt 0 ] && shift
case "$job" in
  setup) echo "circuitlab is set up in $VENV" ;;
  demo) exec "$VENV/bin/circuitlab" demo "$@" ;;
  test) exec "$VPY" -m pytest -q "$@" ;;
  *) exec "$VENV/bin/$job" "$@" ;;
esac
