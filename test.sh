#!/bin/sh
# Runs the test suite (creating the virtual environment first if needed). Arguments go to pytest
# (default: the whole tests/ folder).
set -e
cd "$(dirname "$0")"
./setup.sh
[ $# -eq 0 ] && set -- tests
exec .venv/bin/python -m pytest -q "$@"
