"""What a ``python:`` implementation receives: ``run(ctx)`` with the facts of its attempt.

The same facts reach ``command:`` implementations as ``EAS_*`` environment variables; ``ctx`` saves a
Python task from reading them itself. Raise :class:`TaskFailure` to fail with a plain message.
"""

from __future__ import annotations

import json
import time

from eas_controller.tasks.builtin import TaskFailure

__all__ = ["TaskContext", "TaskFailure"]


class TaskContext:
    """The attempt as seen by its implementation.

    Attributes: ``task_id``, ``attempt_id``, ``description`` (the evaluated task description),
    ``inputs`` / ``outputs`` ({semantic type: path}; write outputs exactly there), ``metadata``
    (inherited: loop values...), ``requested_metadata`` ({sibling name: its output metadata}),
    ``work_dir`` (private scratch folder), ``cpus`` (cores granted), ``resources`` ({name: local path} of the
    shared files in ``resources.files``, fetched once per worker).
    """

    def __init__(self, environment: dict, description: dict, inputs: dict, outputs: dict, metadata_in: dict,
                 resources: dict | None = None):
        self.task_id = int(environment["EAS_TASK_ID"])
        self.attempt_id = int(environment["EAS_ATTEMPT_ID"])
        self.work_dir = environment["EAS_WORK_DIR"]
        self.cpus = int(environment["EAS_CPUS"])
        self.description = description
        self.inputs = inputs
        self.outputs = outputs
        self.resources = dict(resources or {})
        self.metadata = metadata_in.get("metadata", {})
        self.requested_metadata = metadata_in.get("requested_metadata", {})
        self.output_metadata: dict = {}
        self.log_lines: list = []

    def set_metadata(self, key: str, value) -> None:
        """Record output metadata (JSON-serialisable), readable by later siblings and diagnostics."""
        json.dumps(value)  # fail here, with the caller's line in the traceback, if it cannot be stored
        self.output_metadata[str(key)] = value

    def log(self, message: str, severity: str = "INFO") -> None:
        """A log line stored with the attempt (stdout and stderr are stored too)."""
        severity = severity.upper()
        if severity not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            severity = "INFO"
        self.log_lines.append((time.time(), severity, "task", str(message)))
