#!/usr/bin/env python3
"""Run one task or a chain on local files, with no database, queue or server (see --help)."""
import os, sys  # noqa: E401

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", ".."))
from eas_controller.launch import run_command  # noqa: E402

run_command("launch_standalone")
