"""bench/diagnostics_scale.py with tiny jobs, so it cannot rot: it runs to the end on SQLite and on MariaDB
(its own database, named after the tester's), and its results and table are well formed. No timing is
asserted."""

import json
import os

from conftest import REQUIRE_SERVICES

from bench import diagnostics_scale
from bench.common import Result, Services, is_well_formed, unavailable_reason


def test_diagnostics_scale_smoke():
    services = Services.from_environment(database_suffix="_smoke")
    if os.environ.get("EAS_TEST_MYSQL_URL") and not os.environ.get("EAS_BENCH_MYSQL_URL"):
        services.mysql_url = os.environ["EAS_TEST_MYSQL_URL"] + "_bench"
    backends = ("sqlite",) if unavailable_reason(services, "mariadb") and not REQUIRE_SERVICES else ("sqlite", "mariadb")
    results = diagnostics_scale.run(services, backends, sizes=(50, 300), repeats=1, suggested_indexes=True)
    assert len(results) == len(backends) * 2 * 2 * len(diagnostics_scale.LABELS)
    for result in results:
        assert isinstance(result, Result) and is_well_formed(result.to_dict()), result
        json.dumps(result.to_dict())
        assert result.value is not None and result.value > 0, result
    ratios = [r for r in results if r.jobs == 300]
    assert all(r.note.startswith("x") and r.extra["ratio_to_smallest"] > 0 for r in ratios)
    table = diagnostics_scale.render(results)
    assert table.count("\n") == 1 + len(backends) * 2 * len(diagnostics_scale.LABELS)
    assert "| sqlite | task-tree page, first view (depth 2) |" in table
