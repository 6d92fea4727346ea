"""``eas COMMAND [ARGS]`` (or ``python -m eas_controller COMMAND``): every script's command through one entry point.

The commands are the modules of :mod:`eas_controller.commands`, found when ``eas`` runs, so a command added
there appears here with no registration; each takes the same flags as its role-folder script.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import eas_controller.commands as commands

#: Short names for the commands people type most.
ALIASES = {
    "schedule": "schedule_all_waiting_tasks",
    "reschedule": "reschedule_all_unfinished_jobs",
    "cancel": "cancel_job",
    "tree": "display_job_tree",
}


def command_names() -> list[str]:
    return sorted(module.name for module in pkgutil.iter_modules(commands.__path__) if not module.name.startswith("_"))


def resolve(name: str) -> str | None:
    """The command module for what was typed: a module name, an alias, or either with '-' for '_'."""
    name = name.replace("-", "_")
    name = ALIASES.get(name, name)
    return name if name in command_names() else None


def summary(name: str) -> str:
    """The first line of a command's docstring, without its ``name.py:`` prefix."""
    try:
        doc = importlib.import_module("eas_controller.commands." + name).__doc__ or ""
    except Exception as error:  # a broken command must not hide the others
        return "(cannot be imported: %s)" % error
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return line.split(":", 1)[1].strip() if line.startswith(name + ".py:") else line


def usage(program: str) -> str:
    names = command_names()
    width = max(len(name) for name in names)
    aliases = {target: alias for alias, target in ALIASES.items()}
    lines = ["usage: %s COMMAND [--help | ARGS]" % program, "", "commands (each takes the flags of its script):"]
    for name in names:
        alias = " (also: %s)" % aliases[name] if name in aliases else ""
        lines.append("  %-*s  %s%s" % (width, name, summary(name), alias))
    lines += ["", "'%s COMMAND --help' shows a command's flags." % program]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    program = os.path.basename(sys.argv[0])
    program = "python -m eas_controller" if program in ("__main__.py", "") else program
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(program))
        return 0 if argv else 2
    if argv[0] == "--version":
        from eas_controller import __version__

        print("eas-controller %s" % __version__)
        return 0
    name = resolve(argv[0])
    if name is None:
        print("error: unknown command %r; '%s --help' lists the commands" % (argv[0], program), file=sys.stderr)
        return 2
    module = importlib.import_module("eas_controller.commands." + name)
    sys.argv[0] = "%s %s" % (program, argv[0])  # so each command's --help shows how it was called
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
