"""Workers: claim attempts, run them in child processes (:mod:`.execution`, :mod:`.pool`), record the results
(:mod:`.completion`). :class:`~eas_controller.worker.service.Worker` ties them together."""
