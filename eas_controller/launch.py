"""Lets every script run as ``./script.py`` from its own folder, in a fresh shell, with no venv activated.

A script calls :func:`use_project_environment` before importing anything else. When the running
interpreter lacks the project's dependencies, the script re-executes itself under ``.venv/bin/python``
(made by ``setup.sh``); in a container where the dependencies are installed system-wide nothing happens.
Standard library only: this runs before the dependencies are known to be importable.
"""

import importlib.util
import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(PROJECT_ROOT, ".venv", "bin", "python")


def _dependencies_present() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("sqlalchemy", "yaml", "tabulate"))


def use_project_environment() -> None:
    """Re-exec the current script under the project's venv if this interpreter cannot run it."""
    if _dependencies_present():
        return
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(PROJECT_ROOT, ".venv"))
    if os.path.exists(VENV_PYTHON) and not in_venv:
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(sys.argv[0])] + sys.argv[1:])
    sys.stderr.write(
        "The project's dependencies are not installed. Run %s first.\n" % os.path.join(PROJECT_ROOT, "setup.sh")
    )
    sys.exit(2)


def run_command(name: str) -> None:
    """Entry point of every thin script: find the environment, then run ``eas_controller.commands.<name>``."""
    use_project_environment()
    if PROJECT_ROOT not in sys.path:
        sys.path.insert(0, PROJECT_ROOT)
    module = importlib.import_module("eas_controller.commands." + name)
    sys.exit(module.main(sys.argv[1:]))
