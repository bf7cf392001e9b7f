#!/usr/bin/env bash
# Create the virtual environment and install the pinned requirements of one profile.
#   scripts/setup_venv.sh dev   -> everything (services, converter, tests)
#   scripts/setup_venv.sh run   -> what `make run` needs (services + converter)
# Re-running is cheap: a stamp records the hash of the requirement files installed.
set -euo pipefail
profile="${1:-dev}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
req="requirements/${profile}.txt"
[ -f "$req" ] || { echo "setup: no $req" >&2; exit 2; }

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.installed-$profile"
hash=$(cat requirements/*.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
  echo "[setup] installing $req (pinned)"
  "$venv/bin/pip" install --quiet --upgrade pip
  # --no-compile: byte-compiling every installed file (TensorFlow's are most of them) took over a
  # minute; Python compiles the modules it actually imports on first use.
  "$venv/bin/pip" install --quiet --no-compile -r "$req"
  echo "$hash" > "$stamp"
else
  echo "[setup] $req already installed"
fi
