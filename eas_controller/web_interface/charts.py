"""Charts as SVG text drawn on the server: no script and no external file, so the same pictures serve the
console and the self-contained run report. Every label is escaped."""

from __future__ import annotations

from markupsafe import Markup, escape

from eas_controller import states
from eas_controller.views.output import when

STATE_COLOURS = {
    states.WAITING: "#b0bec5", states.READY: "#90caf9", states.QUEUED: "#42a5f5", states.RUNNING: "#ffb300",
    states.DONE: "#43a047", states.FAILED: "#e53935", states.CANCELLED: "#757575", states.HELD: "#8e24aa",
    states.A_SUCCEEDED: "#43a047", states.A_STALLED: "#fb8c00",
}


def state_bar(counts: dict[str, int], width: int = 240, height: int = 14) -> Markup:
    """One stacked bar: the share of tasks in each state, with a tooltip per segment."""
    total = sum(counts.get(state, 0) for state in states.TASK_STATES)
    parts = ['<svg class="statebar" role="img" width="%d" height="%d" viewBox="0 0 %d %d">' % (width, height, width,
                                                                                              height)]
    x = 0.0
    for state in states.TASK_STATES:
        count = counts.get(state, 0)
        if not count or not total:
            continue
        w = width * count / total
        parts.append('<rect x="%.2f" y="0" width="%.2f" height="%d" fill="%s"><title>%s: %d</title></rect>' % (
            x, w, height, STATE_COLOURS[state], escape(state), count))
        x += w
    if not total:
        parts.append('<rect x="0" y="0" width="%d" height="%d" fill="#eeeeee"/>' % (width, height))
    parts.append("</svg>")
    return Markup("".join(parts))


def activity_chart(rows: list[dict], now: float, width: int = 1000, lane: int = 22) -> Markup:
    """A Gantt chart: one lane per worker, one bar per attempt from its start to its end (or now)."""
    if not rows:
        return Markup('<p class="empty">No attempt has started yet.</p>')
    lanes = sorted({row["worker"] for row in rows})
    start = min(row["started_at"] for row in rows)
    end = max((row["ended_at"] or now) for row in rows)
    span = max(end - start, 1e-3)
    left, top = 160, 24
    plot = width - left - 10
    height = top + lane * len(lanes) + 24
    out = ['<svg class="activity" role="img" aria-label="activity per worker" width="%d" height="%d" '
           'viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">' % (
               width, height, width, height)]
    for index, name in enumerate(lanes):
        y = top + index * lane
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>' % (
            left, y, plot, lane, "#f7f7f7" if index % 2 else "#ffffff"))
        out.append('<text class="lane" x="%d" y="%d" text-anchor="end">%s</text>' % (left - 6, y + lane * 0.68,
                                                                                     escape(name[:24])))
    for row in rows:
        y = top + lanes.index(row["worker"]) * lane + 3
        x0 = left + plot * (row["started_at"] - start) / span
        x1 = left + plot * ((row["ended_at"] or now) - start) / span
        out.append('<rect class="attempt" x="%.2f" y="%d" width="%.2f" height="%d" fill="%s"><title>%s</title></rect>' % (
            x0, y, max(x1 - x0, 1.0), lane - 6, STATE_COLOURS.get(row["state"], "#999999"),
            escape("task %d %s%s attempt %d: %s, %.3f s" % (
                row["task_id"], row["task_type"], " " + row["task_name"] if row["task_name"] else "", row["attempt"],
                row["state"], (row["ended_at"] or now) - row["started_at"]))))
    axis_y = top + lane * len(lanes) + 14
    for tick in range(5):
        x = left + plot * tick / 4
        anchor = "start" if tick == 0 else "end" if tick == 4 else "middle"
        out.append('<text x="%.1f" y="%d" text-anchor="%s">+%.3g s</text>' % (x, axis_y, anchor, span * tick / 4))
    out.append('<text x="%d" y="14">%s UTC, %d attempts on %d workers</text>' % (
        left, escape(when(start)), len(rows), len(lanes)))
    out.append("</svg>")
    return Markup("".join(out))


def progress_chart(series: dict, width: int = 1000, height: int = 220) -> Markup:
    """Attempts finished over time (cumulative): succeeded in green, failed or stalled in red."""
    if not series["succeeded"] and not series["failed"]:
        return Markup('<p class="empty">No attempt has finished yet.</p>')
    left, top, bottom = 60, 20, 30
    plot_w, plot_h = width - left - 10, height - top - bottom
    cumulative = {}
    for key in ("succeeded", "failed"):
        total, points = 0, []
        for value in series[key]:
            total += value
            points.append(total)
        cumulative[key] = points
    peak = max(max(cumulative["succeeded"] or [0]), max(cumulative["failed"] or [0]), 1)
    buckets = len(series["succeeded"])
    out = ['<svg class="progress" role="img" aria-label="progress over time" width="%d" height="%d" viewBox="0 0 %d %d" '
           'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">' % (width, height, width, height),
           '<rect x="%d" y="%d" width="%d" height="%d" fill="#fafafa" stroke="#dddddd"/>' % (left, top, plot_w, plot_h)]
    for key, colour in (("succeeded", "#43a047"), ("failed", "#e53935")):
        points = " ".join("%.1f,%.1f" % (left + plot_w * (i + 1) / buckets, top + plot_h * (1 - v / peak))
                          for i, v in enumerate(cumulative[key]))
        out.append('<polyline points="%.1f,%.1f %s" fill="none" stroke="%s" stroke-width="2"/>' % (
            left, top + plot_h, points, colour))
    out.append('<text x="%d" y="%d" text-anchor="end">%d</text>' % (left - 4, top + 10, peak))
    out.append('<text x="%d" y="%d" text-anchor="end">0</text>' % (left - 4, top + plot_h))
    out.append('<text x="%d" y="%d">%s UTC</text>' % (left, height - 8, escape(when(series["start"]))))
    out.append('<text x="%d" y="%d" text-anchor="end">+%.3g s</text>' % (
        width - 10, height - 8, series["end"] - series["start"]))
    out.append('<text x="%d" y="14">finished attempts: %d succeeded, %d failed or stalled</text>' % (
        left, sum(series["succeeded"]), sum(series["failed"])))
    out.append("</svg>")
    return Markup("".join(out))
