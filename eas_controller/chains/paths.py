"""File names, URIs and working directories in a chain: kept inside the data directory (or given as a URI that a
worker can reach, see :mod:`eas_controller.uris`) and within column sizes."""

from __future__ import annotations

import posixpath
from typing import Any

from eas_controller import uris
from eas_controller.chains.model import ChainError
from eas_controller.chains.storable import check_text


def relative_path(working_directory: str, filename: Any, where: str, field: str) -> str:
    if not isinstance(filename, str) or not filename.strip():
        raise ChainError("%s: field '%s' must be a file name (a non-empty string), not %r" % (where, field, filename))
    path = posixpath.normpath(posixpath.join(working_directory or "", filename))
    if posixpath.isabs(filename) or path.startswith("..") or path in (".", ""):
        raise ChainError(
            "%s: field '%s': %r must stay inside the working directory (no absolute paths or '..')"
            % (where, field, filename)
        )
    return path


def file_or_uri(working_directory: str, filename: Any, where: str, field: str, writing: bool = False) -> str:
    """What a task's ``inputs`` / ``outputs`` entry names: a URI as it is (checked), else a relative path."""
    if uris.is_uri(filename):
        try:
            uris.check(filename, writing)
        except uris.UriError as error:
            raise ChainError("%s: field '%s': %s" % (where, field, error)) from None
        return filename
    return relative_path(working_directory, filename, where, field)


def check_resources(resources: Any, where: str) -> None:
    """A task's own ``resources``: a mapping whose ``files`` (if any) maps names to shared files' URIs."""
    if not isinstance(resources, dict):
        raise ChainError("%s: field 'resources' must be an object like {\"files\": {name: URI}}, not %r"
                         % (where, resources))
    for key in sorted(set(resources) - {"files"}, key=str):
        raise ChainError("%s: field 'resources.%s': a task in a chain may only add shared files here "
                         "(\"resources\": {\"files\": {name: URI}}); cpu, gpu and memory_gb are its task type's "
                         "(docs/task_types.md)" % (where, key))
    files = resources.get("files", {})
    if not isinstance(files, dict):
        raise ChainError("%s: field 'resources.files' must be an object {name: URI}, not %r" % (where, files))
    for name, value in files.items():
        try:
            uris.check_file_spec(value)
        except uris.UriError as error:
            raise ChainError("%s: field 'resources.files.%s': %s" % (where, name, error)) from None


#: the longest value the database columns hold (see database/schema.py)
MAX_LENGTHS = {"name": 255, "job_name": 255, "working_directory": 512, "path": 760, "semantic": 128}


def check_length(value: Any, field: str, where: str) -> None:
    """A value stored in a column of its own: short enough for the column, and text every back end stores."""
    check_text(value, field, where)
    kind = ("semantic" if "semantic type" in field else "path" if field.startswith(("inputs.", "outputs."))
            else field)
    limit = MAX_LENGTHS.get(kind)
    if limit and isinstance(value, str) and len(value) > limit:
        raise ChainError("%s: field '%s' is %d characters long; at most %d are stored" % (
            where, field, len(value), limit))


def normalised_directory(working_directory: str, where: str) -> str:
    """A working directory, normalised: relative to the data directory, never outside it ('' is its top)."""
    if not working_directory or posixpath.normpath(working_directory) == ".":
        return ""
    return relative_path("", working_directory, where, "working_directory")
