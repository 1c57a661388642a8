#!/usr/bin/env bash
# Create .venv with Python >= 3.11 and install hpcstudy into it (with the extras given).
set -euo pipefail
extras="${1:-}"
py="${PYTHON:-python3}"
"$py" - <<'PY' || { echo "hpcstudy needs Python >= 3.11 (found $($py --version 2>&1))" >&2; exit 2; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if [ ! -x .venv/bin/python ]; then
  if ! "$py" -m venv .venv 2>/dev/null; then
    # Debian ships venv separately; install it when we may.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      rm -rf .venv
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$py" -m venv .venv
    else
      echo "cannot create a virtual environment: install python3-venv" >&2; exit 2
    fi
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install -q -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import hpcstudy, hpcstudy_kernels" # fail loudly if the install did not work
