"""Reading a chain file: JSON text to a dict, with errors that say where the text is wrong."""

from __future__ import annotations

import json

from eas_controller.chains.model import ChainError, json_type


def read_chain_text(text: str, source: str) -> dict:
    """Parse JSON with an error that gives line and column."""
    try:
        chain = json.loads(text)
    except json.JSONDecodeError as error:
        raise ChainError(
            "%s: not valid JSON at line %d, column %d: %s" % (source, error.lineno, error.colno, error.msg)
        ) from None
    except RecursionError:
        raise ChainError("%s: the JSON nests lists and objects too deeply to read" % source) from None
    except ValueError as error:  # e.g. a number of more digits than Python converts
        raise ChainError("%s: not valid JSON: %s" % (source, error)) from None
    if not isinstance(chain, dict):
        raise ChainError("%s: a task chain must be a JSON object with a 'task_list', not %s"
                         % (source, json_type(chain)))
    return chain


def read_chain_file(path: str) -> tuple[dict, str]:
    """Read a chain from ``path`` (``-`` is standard input); returns (chain, source name for messages)."""
    import sys

    if path == "-":
        return read_chain_text(sys.stdin.read(), "<stdin>"), "<stdin>"
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as error:
        raise ChainError("%s: cannot read the task chain: %s" % (path, error.strerror)) from None
    except UnicodeDecodeError as error:
        raise ChainError("%s: the task chain is not UTF-8 text (%s)" % (path, error.reason)) from None
    return read_chain_text(text, path), path
