"""The task-type registry: which task types exist, how each runs, and what resources it needs.

Registries are YAML files (the shipped ``task_types.yaml`` plus the user's own). ``init_schema.py`` loads
them into the database so that workers on other machines see the same definitions; re-loading after an
edit updates the rows. Control-flow types (loops, conditionals) are built into the controller and are
not listed here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from typing import Any, Iterable

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection

from eas_controller import uris
from eas_controller.concurrency import Limit, LimitError, parse_limit
from eas_controller.database.schema import task_types as task_types_table

SHIPPED_REGISTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "task_types.yaml")

CONTROL_TYPES = ("execution_chain", "execution_for_loop", "execution_conditional", "execution_do_while_loop")

ALLOWED_KEYS = {"python", "command", "container", "resources", "max_attempts", "timeout_s", "qc", "description",
                "version", "concurrency_limit"}
RESOURCE_KEYS = {"cpu", "gpu", "memory_gb", "files"}


class RegistryError(ValueError):
    """A registry file is malformed; the message names the file, the task type and the field."""


@dataclasses.dataclass(frozen=True)
class TaskType:
    name: str
    kind: str  # "python" or "command"
    target: str  # module:function, or a command template
    cpu: float = 1.0
    gpu: int = 0
    memory_gb: float = 0.0
    max_attempts: int | None = None
    timeout_s: float | None = None
    qc: str | None = None
    container: str | None = None
    source: str = ""
    version: str = "1"  # raise it when the implementation changes what it makes (submit.py --resume re-runs)
    #: shared files (``resources.files``): ((name, URI), ...) sorted by name; kept in the ``definition`` column
    files: tuple = ()
    limit_key: str | None = None  # concurrency_limit.key: a constant or an expression; None: the type's name
    limit_max: int | None = None  # concurrency_limit.max; None: no limit

    @property
    def resource_files(self) -> dict[str, str]:
        return dict(self.files)

    @property
    def concurrency_limit(self) -> Limit | None:
        return Limit(self.limit_key, self.limit_max) if self.limit_max is not None else None

    def as_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        definition = dict(row)
        if not self.files:  # the definition of a type without shared files is what it was before they existed
            del definition["files"]
        del row["files"]
        row["definition"] = json.dumps(definition, sort_keys=True)
        row["updated_at"] = time.time()
        return row


def import_callable(reference: str):
    """Resolve ``package.module:function``; raises ImportError/AttributeError with the reference named."""
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise ValueError("%r is not of the form module:function" % reference)
    function = getattr(importlib.import_module(module_name), function_name)
    if not callable(function):
        raise TypeError("%r is not callable" % reference)
    return function


def _number(value: Any, where: str, integer: bool = False, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RegistryError("%s must be a non-negative number, not %r" % (where, value))
    if integer and int(value) != value:
        raise RegistryError("%s must be a whole number, not %r" % (where, value))
    return int(value) if integer else float(value)


def parse_entry(name: Any, entry: Any, source: str, check_imports: bool = True) -> TaskType:
    """Validate one registry entry and turn it into a :class:`TaskType`."""
    if name is None:
        raise RegistryError('%s: a task type is named null (YAML reads `null:` as nothing): write "null": instead' % source)
    where = "%s: task type %r" % (source, name)
    if not isinstance(name, str) or not name.strip():
        raise RegistryError("%s: task type names must be non-empty strings, not %r" % (source, name))
    if name in CONTROL_TYPES:
        raise RegistryError("%s is built in (control flow) and cannot be redefined" % where)
    if not isinstance(entry, dict):
        raise RegistryError("%s must be a mapping of settings, not %r" % (where, entry))
    unknown = sorted(set(entry) - ALLOWED_KEYS)
    if unknown:
        raise RegistryError("%s: unknown key(s) %s; allowed: %s" % (where, unknown, sorted(ALLOWED_KEYS)))
    forms = [key for key in ("python", "command") if key in entry]
    if len(forms) != 1:
        raise RegistryError("%s needs exactly one of 'python' (module:function) or 'command' (template)" % where)
    kind = forms[0]
    target = entry[kind]
    if not isinstance(target, str) or not target.strip():
        raise RegistryError("%s: %s must be a non-empty string" % (where, kind))
    if kind == "python" and check_imports:
        try:
            import_callable(target)
        except Exception as error:
            raise RegistryError("%s: python implementation %r cannot be imported: %s" % (where, target, error)) from None
    resources = entry.get("resources", {}) or {}
    if not isinstance(resources, dict):
        raise RegistryError("%s: resources must be a mapping like {cpu: 1, gpu: 0, memory_gb: 1}" % where)
    unknown = sorted(set(resources) - RESOURCE_KEYS)
    if unknown:
        raise RegistryError("%s: unknown resource(s) %s; allowed: %s" % (where, unknown, sorted(RESOURCE_KEYS)))
    files = resources.get("files") or {}
    if not isinstance(files, dict):
        raise RegistryError("%s: resources.files must be a mapping {name: URI}" % where)
    for file_name, spec in files.items():
        if not isinstance(file_name, str) or not file_name.strip():
            raise RegistryError("%s: resources.files: names must be non-empty strings, not %r" % (where, file_name))
        try:
            uris.check_file_spec(spec)
        except uris.UriError as error:
            raise RegistryError("%s: resources.files.%s: %s" % (where, file_name, error)) from None
    cpu = _number(resources.get("cpu", 1), where + ": resources.cpu")
    if cpu == 0:
        raise RegistryError("%s: resources.cpu must be greater than 0" % where)
    qc = entry.get("qc")
    if qc is not None:
        if not isinstance(qc, str):
            raise RegistryError("%s: qc must be a module:function string" % where)
        if check_imports:
            try:
                import_callable(qc)
            except Exception as error:
                raise RegistryError("%s: qc check %r cannot be imported: %s" % (where, qc, error)) from None
    max_attempts = _number(entry.get("max_attempts"), where + ": max_attempts", integer=True, allow_none=True)
    if max_attempts == 0:
        raise RegistryError("%s: max_attempts must be at least 1" % where)
    timeout = _number(entry.get("timeout_s"), where + ": timeout_s", allow_none=True)
    container = entry.get("container")
    if container is not None and not isinstance(container, str):
        raise RegistryError("%s: container must be a string (an image or deployment name)" % where)
    version = entry.get("version", "1")
    if isinstance(version, bool) or not isinstance(version, (str, int, float)) or not str(version).strip() \
            or len(str(version)) > 64:
        raise RegistryError("%s: version must be a string or number of 1 to 64 characters, not %r" % (where, version))
    limit = None
    if entry.get("concurrency_limit") is not None:
        try:
            limit = parse_limit(entry["concurrency_limit"])
        except LimitError as error:
            raise RegistryError("%s: %s" % (where, error)) from None
    return TaskType(
        version=str(version),
        name=name,
        kind=kind,
        target=target,
        cpu=cpu,
        gpu=_number(resources.get("gpu", 0), where + ": resources.gpu", integer=True),
        memory_gb=_number(resources.get("memory_gb", 0), where + ": resources.memory_gb"),
        max_attempts=max_attempts,
        timeout_s=timeout or None,
        qc=qc,
        container=container,
        source=source,
        files=tuple(sorted(files.items())),
        limit_key=limit.key if limit else None,
        limit_max=limit.max if limit else None,
    )


def read_registry_file(path: str, check_imports: bool = True) -> list[TaskType]:
    if not os.path.exists(path):
        raise RegistryError("task-type registry %s does not exist" % path)
    try:
        with open(path) as handle:
            content = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise RegistryError("task-type registry %s is not valid YAML: %s" % (path, error)) from None
    if not isinstance(content, dict) or not isinstance(content.get("task_types"), dict):
        raise RegistryError("task-type registry %s must have a top-level mapping 'task_types'" % path)
    unknown = sorted(set(content) - {"task_types"})
    if unknown:
        raise RegistryError("task-type registry %s: unknown top-level key(s) %s" % (path, unknown))
    return [parse_entry(name, entry, path, check_imports) for name, entry in content["task_types"].items()]


def read_registries(paths: Iterable[str], check_imports: bool = True) -> dict[str, TaskType]:
    """The shipped registry followed by ``paths``; a later file may redefine an earlier type.

    The shipped registry's implementations are not imported here: some need the optional science libraries
    (``pip install eas-controller[science]``), and without them the other types must still work (a task of
    such a type then fails saying which module is missing). The test suite imports every one of them."""
    types: dict[str, TaskType] = {}
    for path in [SHIPPED_REGISTRY] + [os.path.abspath(p) for p in paths]:
        for task_type in read_registry_file(path, check_imports and path != SHIPPED_REGISTRY):
            types[task_type.name] = task_type
    return types


def store_registry(connection: Connection, types: dict[str, TaskType]) -> dict[str, int]:
    """Insert new types and update changed ones; returns counts for printing."""
    table = task_types_table
    existing = {row.name: row.definition for row in connection.execute(sa.select(table.c.name, table.c.definition))}
    counts = {"added": 0, "updated": 0, "unchanged": 0}
    for task_type in types.values():
        row = task_type.as_row()
        if task_type.name not in existing:
            connection.execute(table.insert().values(**row))
            counts["added"] += 1
        elif existing[task_type.name] != row["definition"]:
            connection.execute(table.update().where(table.c.name == task_type.name).values(**row))
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    return counts


def load_registry(connection: Connection) -> dict[str, TaskType]:
    """The registry as stored in the database (what workers and the submitter use)."""
    fields = [field.name for field in dataclasses.fields(TaskType) if field.name != "files"]
    rows = connection.execute(sa.select(*[task_types_table.c[name] for name in fields], task_types_table.c.definition))
    types = {}
    for row in rows:
        values = row._asdict()
        files = json.loads(values.pop("definition")).get("files") or ()
        types[row.name] = TaskType(**values, files=tuple((name, uri) for name, uri in files))
    return types


def type_names(connection: Connection) -> list[str]:
    """The names of the registered task types, sorted."""
    return sorted(connection.execute(sa.select(task_types_table.c.name)).scalars())
