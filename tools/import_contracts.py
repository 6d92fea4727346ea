"""An import-linter contract of our own: a name starting with ``_`` is private to its package.

``from eas_controller.a.b import _helper`` is allowed only inside the package ``eas_controller.a``; anywhere
else it breaks the contract (the helper's module may change it at will). Checked by ``lint-imports``.
"""

from __future__ import annotations

import re

from importlinter import Contract, ContractCheck, output

_FROM_IMPORT = re.compile(r"^\s*from\s+([\w.]+)\s+import\s+\(?([^#]*)")


def _package(module: str) -> str:
    return module.rsplit(".", 1)[0] if "." in module else module


class NoPrivateImportsContract(Contract):
    def check(self, graph, verbose: bool) -> ContractCheck:
        broken = []
        for importer in sorted(graph.modules):
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if _package(importer).startswith(_package(imported)):
                    continue  # same package (or a subpackage of it)
                for detail in graph.get_import_details(importer=importer, imported=imported):
                    match = _FROM_IMPORT.match(detail["line_contents"])
                    if not match:
                        continue
                    names = [part.strip().split(" as ")[0] for part in match.group(2).strip(") ").split(",")]
                    private = [name for name in names if name.startswith("_") and not name.startswith("__")]
                    if private:
                        broken.append("%s:%s imports %s from %s" % (importer, detail["line_number"],
                                                                     ", ".join(private), imported))
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["broken"]:
            output.print_error(line)
