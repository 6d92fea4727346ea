"""What the worker keeps about one attempt from its claim to its completion."""

from __future__ import annotations

import dataclasses
import threading

from eas_controller.registry import TaskType
from eas_controller.worker.logs import LogBuffer


@dataclasses.dataclass
class RunningAttempt:
    claim: dict
    task_type: TaskType
    gpu_ids: list | None
    logs: LogBuffer = dataclasses.field(default_factory=LogBuffer)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)  # stop the task now
    lost: str | None = None  # why ownership was lost ("cancelled", "stalled"...), once it was
    recording: bool = False  # the completion transaction has started
    started_at: float | None = None  # when a slot took it (prefetched attempts wait in the backlog first)
    alone: bool = False  # never in a batch again: one it was in failed unexpectedly

    @property
    def attempt_id(self) -> int:
        return self.claim["attempt_id"]

    def is_set(self) -> bool:  # lets the attempt itself serve as the stop event of run_command / PythonChild
        return self.stop.is_set()


def first_line(text: str | None) -> str:
    """The line that says what went wrong: a traceback's last line, else the first."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")
