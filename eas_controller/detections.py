"""The detection table of a transit-search job: for each point of its parameter grid (the loop values a
search inherited, e.g. planet size x cadence), whether the search recovered the injected planet
(``outcome`` PASS/FAIL), the period it found, and what any follow-up search inside the same loop pass
found. Read-only; ``run_local.py`` prints it after the summary of a job that has transit searches."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from tabulate import tabulate

from eas_controller.database.schema import tasks
from eas_controller.reports import task_metadata

#: The seed's Earth radius in Jupiter radii, the unit of ``planet_radius``.
REARTH_IN_RJUP = 0.08911486


def _number(value, pattern: str = "%.4g") -> str:
    return pattern % value if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def detection_rows(connection: Connection, job_id: int) -> list[dict]:
    """One row per grid point that has a transit search, in the order the searches were created."""
    rows = connection.execute(
        sa.select(tasks.c.id, tasks.c.name, tasks.c.task_type, tasks.c.state, tasks.c.metadata)
        .where(tasks.c.job_id == job_id, tasks.c.is_control.is_(False), tasks.c.task_type.like("transit_search_%"))
        .order_by(tasks.c.id)
    ).all()
    found = task_metadata(connection, [row.id for row in rows])
    points: dict[str, dict] = {}
    for row in rows:
        loop = {key: value for key, value in json.loads(row.metadata).items() if not key.endswith("_index")}
        key = json.dumps(loop, sort_keys=True)
        result = found.get(row.id, {})
        search = row.task_type[len("transit_search_"):]
        if key not in points:
            radius = result.get("injected_planet_radius")
            points[key] = dict(
                loop=loop, search=search, state=row.state, outcome=result.get("outcome", "-" if row.state == "done" else row.state),
                period=result.get("period"), injected_period=result.get("injected_period"), snr=result.get("snr"),
                radius_earth=radius / REARTH_IN_RJUP if isinstance(radius, (int, float)) else None, follow_up=[],
            )
        else:
            points[key]["follow_up"].append("%s %s P=%s d" % (search, result.get("outcome", row.state),
                                                              _number(result.get("period"), "%.4f")))
    return list(points.values())


def render(rows: list[dict]) -> str:
    """The table as text: loop values, planet radius (Earth radii), outcome, periods, S/N, follow-up."""
    if not rows:
        return ""
    parameters = []
    for row in rows:
        parameters += [name for name in row["loop"] if name not in parameters]
    table = []
    for row in rows:
        table.append([_number(row["loop"].get(name)) if not isinstance(row["loop"].get(name), str) else row["loop"][name]
                      for name in parameters] + [
            _number(row["radius_earth"], "%.2f"), row["search"], row["outcome"], _number(row["period"], "%.4f"),
            _number(row["injected_period"], "%.4f"), _number(row["snr"], "%.1f"), "; ".join(row["follow_up"]) or "-"])
    headers = parameters + ["radius (R_earth)", "search", "outcome", "period found (d)", "injected (d)", "S/N",
                            "follow-up"]
    return tabulate(table, headers=headers, disable_numparse=True)


def job_products_folder(connection: Connection, job_id: int) -> str:
    """The working directory of the job's top task (where its products are, under the data directory)."""
    value = connection.execute(sa.select(tasks.c.working_directory).where(tasks.c.job_id == job_id)
                               .order_by(tasks.c.id).limit(1)).scalar()
    return value or ""
