#!/bin/sh
# Restart the web console on Kubernetes (see --help): a thin door onto `eas_controller restart_web_interface`.
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$(dirname "$here")")
python=python3
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m eas_controller restart_web_interface "$@"
