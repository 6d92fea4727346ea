"""The schema's history as Alembic revisions; :mod:`eas_controller.database.migrate` runs them."""
