"""timings_to_csv.py: the timings of timings_list.py (count, mean, median, max of wall, CPU and CPU with
children per task type, or per loop value with --by) as CSV, for a spreadsheet or a plot."""

from __future__ import annotations

from eas_controller.commands import timings_list


def main(argv: list[str]) -> int:
    return timings_list.main(argv, __doc__, default_format="csv")
