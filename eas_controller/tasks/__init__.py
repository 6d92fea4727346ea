"""Implementations of the shipped task types (see ``eas_controller/task_types.yaml``)."""
