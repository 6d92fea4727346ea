#!/usr/bin/env python3
"""Serve the REST API alone (see --help)."""
import os, sys  # noqa: E401

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", ".."))
from eas_controller.launch import run_command  # noqa: E402

run_command("rest_api")
