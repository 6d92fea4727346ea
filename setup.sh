#!/bin/sh
# Creates .venv beside this file and installs requirements.txt into it (again only when it changed).
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log=.venv/pip-install.log
  if ! .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    echo "setup.sh: installing requirements.txt failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
