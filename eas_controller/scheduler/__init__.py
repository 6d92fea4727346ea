"""The scheduler role: passes that promote, expand and recover (:mod:`.passes`), their status line
(:mod:`.status`) and the daemon that runs them one after another (:mod:`.daemon`)."""

from eas_controller.scheduler.passes import PassResult, Scheduler, requested_metadata_in_scope
from eas_controller.scheduler.status import status_line

__all__ = ["PassResult", "Scheduler", "requested_metadata_in_scope", "status_line"]
