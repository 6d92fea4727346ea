"""``python -m eas_controller COMMAND [ARGS]``: every script's command through one entry point."""

import importlib
import pkgutil
import sys

import eas_controller.commands as commands


def main() -> int:
    names = sorted(module.name for module in pkgutil.iter_modules(commands.__path__))
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help") or sys.argv[1] not in names:
        print("usage: python -m eas_controller COMMAND [--help | ARGS]\n\ncommands:\n  " + "\n  ".join(names))
        return 0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2
    module = importlib.import_module("eas_controller.commands." + sys.argv[1])
    return module.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
