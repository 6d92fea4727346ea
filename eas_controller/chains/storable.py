"""What every database can store: checks that make SQLite, MariaDB and PostgreSQL accept or refuse alike.

A chain is JSON, and JSON can say things a database column cannot hold: PostgreSQL refuses the NUL
character in text, no driver can encode a lone UTF-16 surrogate (JSON allows ``"\\ud800"``), MariaDB's
MEDIUMTEXT and packet size cap a row at 16 MB, and Python cannot even print an integer of 5,000 digits.
Left to the database these become a crash on one back end and a success on another; checked here,
before anything is written, they are one clear error everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

from eas_controller.chains.model import ChainError

#: lists and objects inside one another, at most (the PLATO pipeline's deepest demo chains use about 15)
MAX_NESTING = 100
#: bits of the largest whole number in a chain (about 3,000 digits)
MAX_INT_BITS = 10_000
#: characters of JSON a task's stored description and its inherited metadata may take
MAX_DESCRIPTION_CHARS = 3_000_000
MAX_METADATA_CHARS = 1_000_000

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
def check_text(value: Any, field: str, where: str) -> None:
    """A string stored in a column of its own (name, path, semantic type...) must be plain Unicode text."""
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        if found:
            what = "the NUL character" if found.group() == "\x00" else "a lone surrogate (\\u%04x)" % ord(found.group())
            raise ChainError("%s: field '%s' contains %s, which databases cannot store" % (where, field, what))


def check_values(chain: dict, source: str) -> None:
    """Nesting depth and number sizes anywhere in the chain, walked without recursion."""
    pending = [(chain, "", "", 0, False)]  # value, task path, field path, depth, value is a list of tasks
    while pending:
        value, task_path, field, depth, is_task_list = pending.pop()
        if depth > MAX_NESTING:
            raise ChainError("%s: %s: field '%s' nests lists and objects more than %d deep"
                             % (source, task_path or "<chain>", field, MAX_NESTING))
        if type(value) is str and _SURROGATE.search(value):
            raise ChainError("%s: %s: field '%s' contains a lone surrogate (\\u%04x), which is not Unicode text"
                             % (source, task_path or "<chain>", field, ord(_SURROGATE.search(value).group())))
        if type(value) is int and value.bit_length() > MAX_INT_BITS:
            raise ChainError("%s: %s: field '%s' holds a whole number of %d bits; at most %d are allowed"
                             % (source, task_path or "<chain>", field, value.bit_length(), MAX_INT_BITS))
        if isinstance(value, dict):
            is_task = field == "" or is_task_list
            for key, item in value.items():
                if type(key) is str and _SURROGATE.search(key):
                    pending.append((key, task_path, field or str(key), depth + 1, False))
                if is_task:
                    item_field = str(key)
                    pending.append((item, task_path, item_field, depth + 1, key in ("task_list", "else_task_list")))
                else:
                    pending.append((item, task_path, "%s.%s" % (field, key), depth + 1, False))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if is_task_list and isinstance(item, dict):
                    inner = "%s%s[%d]" % (task_path + "." if task_path else "", field.rsplit(".", 1)[-1], index)
                    pending.append((item, inner, "", depth + 1, True))
                else:
                    pending.append((item, task_path, "%s[%d]" % (field, index), depth + 1, False))


def check_stored_sizes(nodes: list, source: str) -> None:
    """Each task's description and metadata, as JSON, must fit a row on every back end.

    Children are checked before their parents (whose descriptions hold them), so the message names the
    task whose field is too large.
    """
    for node in reversed(nodes):
        for what, value, limit in (("description", node.description, MAX_DESCRIPTION_CHARS),
                                   ("inherited metadata", node.metadata, MAX_METADATA_CHARS)):
            size = len(json.dumps(value))
            if size > limit:
                largest = max(value, key=lambda key: len(json.dumps(value[key])), default=None)
                raise ChainError("%s: %s: the task's %s is %d characters of JSON; at most %d are stored%s" % (
                    source, node.chain_path or "<chain>", what, size, limit,
                    " (its largest field: %r)" % largest if largest is not None else ""))
