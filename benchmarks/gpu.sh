#!/usr/bin/env bash
# The prepared GPU check in one command (see benchmarks/gpu.py and docs/gpu.md):
#   bash benchmarks/gpu.sh [--cpu] [--out DIR] [--budget SECONDS] [--only PART,...] [--levers] [--keep-work]
#   bash benchmarks/gpu.sh --help
# Runs from any directory; the repository is this script's parent's parent. Exit status 1 if a step failed.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
    echo "fail  preflight/python  0.0 s  no $python on PATH: set PYTHON=/path/to/python (3.11 or later)"
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "fail  preflight/python  0.0 s  $("$python" --version 2>&1) is older than 3.11"
    exit 1
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$repo/benchmarks/gpu.py" "$@"
