"""The store: the only code that writes the tasks, attempts, SQL-queue, workers and control-progress tables.

Each module owns the statements of the tables it is named for, as small named operations that run inside
the caller's transaction. An operation that moves a ``state`` declares the states it may move rows from
(checked against the table of allowed transitions in :mod:`eas_controller.states`), puts them in its WHERE
clause, and reports the rows it did not move (:class:`~eas_controller.store.moves.Moved`).

- :mod:`.tasks`: ``lock_ready``, ``mark_queued``, ``mark_running``, ``finish_done``, ``finish_failed``,
  ``schedule_retry``, ``retry_or_fail``, ``start_expansion``, ``store_evaluated``, ``release_running``,
  ``unqueue``, ``hold`` / ``unhold``, ``cancel``, ``reschedule_failed``, ``clear_backoff``, ``ready_orphans``
- :mod:`.attempts`: ``create``, ``start`` (the claim), ``renew_leases``, ``expired``, ``stall``,
  ``lock_for_completion``, ``finish``, ``release``, ``cancel_queued``, ``cancel_running``, ``set_carrier``
- :mod:`.readiness`: ``release_dependants``, ``count_down``, ``count_control_progress``
- :mod:`.sql_queue`: ``insert``, ``take`` (skips rows of a full concurrency limit key), ``remove``, ``take_all``,
  and the rows a resync adds or drops
- :mod:`.limits`: concurrency limits by key: ``declare`` (a key's row), ``free_slots`` / ``admit`` (in the
  claim: the keys' rows locked, their running attempts counted), ``held_with_room`` (AMQP attempts held back)
- :mod:`.workers`: ``register``, ``heartbeat``, ``mark_stopped``
- :mod:`.plans`: ``write_plan`` (tasks, dependencies and planned products of a submission or an expansion)
- :mod:`.reuse`: what earlier runs of a job left, and ``take_over`` (a resumed task finished with them)
- :mod:`.metadata`, :mod:`.logs`, :mod:`.products`: output metadata, log lines, product versions
"""
