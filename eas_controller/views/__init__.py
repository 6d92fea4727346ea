"""Read-only views over the tables: the one place the diagnostic scripts, ``run_local.py``, the web console
and the run report read from. One module per subject (jobs, tree, progress, errors, timings, grid,
workers, explain, task, activity); none of them writes.

Views return plain rows (dicts) so that each caller chooses how to show them; :func:`output.emit` prints
them as a table, JSON or CSV, which gives every diagnostic script the same ``--format`` behaviour.
"""


class NotFound(LookupError):
    """The job or task a caller named does not exist (scripts print this as one ``error:`` line)."""
