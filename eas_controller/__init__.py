"""EAS Controller: a pipeline controller that keeps tasks, attempts, logs and products in one SQL database.

Importing the package stays free of third-party imports so that the thin scripts can locate the project's
virtual environment (see :mod:`eas_controller.launch`) before anything heavier is loaded.
"""

__version__ = "0.1.0"
