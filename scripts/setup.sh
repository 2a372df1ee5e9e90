#!/usr/bin/env bash
# Create (or update) the project's virtual environment and install pinned dependencies.
#
#   bash scripts/setup.sh              # runtime: what `python main.py ...` needs
#   bash scripts/setup.sh --dev        # runtime + export, trackers and postgres extras + test tools (pytest, pexpect)
#   bash scripts/setup.sh --export     # runtime + onnx, onnxscript, onnxruntime (`export`, --runtime=onnxruntime)
#   bash scripts/setup.sh --dashboard  # runtime + optuna-dashboard, a web view of sweeps
#   bash scripts/setup.sh --trackers   # runtime + mlflow and wandb (--loggers=mlflow / wandb)
#   bash scripts/setup.sh --postgres   # runtime + the PostgreSQL driver (sweep --storage=postgresql://...)
#
# The venv lives in $RUNNER_VENV (default: .venv beside this script's parent). Re-running is
# cheap: pip skips what is already installed at the pinned version.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RUNNER_VENV:-$here/.venv}"
requirements=("$here/requirements.txt")
for option in "$@"; do
    case "$option" in
        --dev) requirements+=("$here/requirements-dev.txt") ;;
        --export) requirements+=("$here/requirements-export.txt") ;;
        --dashboard) requirements+=("$here/requirements-dashboard.txt") ;;
        --trackers) requirements+=("$here/requirements-trackers.txt") ;;
        --postgres) requirements+=("$here/requirements-postgres.txt") ;;
        *) echo "usage: bash scripts/setup.sh [--dev] [--export] [--dashboard] [--trackers] [--postgres]" >&2; exit 2 ;;
    esac
done

python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
# -qq: pip's warnings about unreachable local index pages are noise; errors still show.
pip=("$venv/bin/python" -m pip -qq --disable-pip-version-check)

# visdom 0.2.4 (imported by torchnet 0.0.4 at import time) is published only as an sdist
# whose setup.py imports pkg_resources, which setuptools removed in 81. pip's isolated build
# environment would fetch the newest setuptools and fail, so we build sdists against the
# venv's own setuptools<81 instead (--no-build-isolation). Wheels are unaffected.
setuptools_pin="$(grep -E '^setuptools==' "$here/requirements.txt")"
names=("${requirements[@]##*/}")
echo "setup: installing ${names[*]} into $venv (first run: about 2 minutes)" >&2
"${pip[@]}" install "$setuptools_pin" wheel
files=()
for file in "${requirements[@]}"; do files+=(-r "$file"); done
"${pip[@]}" install --no-build-isolation "${files[@]}"
echo "setup: environment ready in $venv" >&2
