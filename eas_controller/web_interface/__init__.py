"""The web console: read-only pages over the views (jobs, task tree, tasks, products, timings, pass/fail grid,
errors, progress and activity charts, workers and queues), and the self-contained run report.

Everything a page needs is served by the console itself (no CDN), so it works on a cluster with no internet;
charts are SVG drawn on the server. Every user string goes through Jinja's autoescaping or
:func:`markupsafe.escape`.
"""
