"""The Python door: submit task chains and run functions on the EAS workers from code.

>>> from eas_controller import api
>>> job = api.submit({"task_list": [{"task": "shell", "command": "echo hi"}]})
>>> job.wait().state
'done'
>>> with api.get_executor("eas") as ex:
...     squares = list(ex.map(pow, range(10), [2] * 10))

See docs/python_api.md. Settings come from the environment and the settings file, as for the scripts,
unless a :class:`~eas_controller.config.Settings` is passed.
"""

from eas_controller.api.executor import (
    Executor,
    RemoteError,
    RemoteTraceback,
    SequentialExecutor,
    get_executor,
)
from eas_controller.api.jobs import Job, JobStatus, TaskResult, add_to_batch, submit

__all__ = [
    "Executor",
    "Job",
    "JobStatus",
    "RemoteError",
    "RemoteTraceback",
    "SequentialExecutor",
    "TaskResult",
    "add_to_batch",
    "get_executor",
    "submit",
]
