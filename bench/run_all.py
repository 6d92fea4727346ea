#!/usr/bin/env python3
"""Run the whole benchmark suite and print one table of results and target ratios.

Runs, in order: the raw limits of this machine (limits.py), the seed's claim algorithm (seed_claim.py),
our queues' claim throughput (queue_claim.py), end to end with real scheduler and worker processes
(end_to_end.py), RQ and Celery on the same no-op jobs (peers.py), behaviour with 10^4..10^6 finished
tasks (scale.py), PostgreSQL claims after 10^5/10^6 churned (pg_churn.py), 50/100 workers against one
MariaDB (many_workers.py), and any other benchmark script in bench/ that the suite knows of (expansion.py,
scheduler_scale.py) when it exists. Writes every result as JSON to bench/results/ and, with
--update-docs, the table into docs/performance.md. --quick takes about 10 minutes; the full run
(20,000-task end to end and peers, a 100,000-task run for peak memory) takes longer.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import datetime
import json
import subprocess
import tempfile
import time

from bench.common import (
    BACKEND_LABELS, BACKENDS, PROJECT_ROOT, RESULTS_DIR, Result, Services, format_value, machine_facts,
    server_versions,
)

#: other engineers' benchmark scripts, run when present: (file, group)
EXTERNAL_SCRIPTS = (("expansion.py", "expansion"), ("scheduler_scale.py", "scheduler_scale"))
DOCS_PATH = os.path.join(PROJECT_ROOT, "docs", "performance.md")
DOCS_START = "<!-- bench/run_all.py: latest results (start) -->"
DOCS_END = "<!-- bench/run_all.py: latest results (end) -->"


#: Tasks (and peers' jobs) of the quick end-to-end runs on MariaDB.
QUICK_TASKS = 10_000


def run_end_to_end(services: Services, quick: bool) -> list[Result]:
    """Quick: 10,000 tasks on MariaDB (the target's back end; the peers get as many), 1,000 on the others;
    full: 20,000 everywhere and a 100,000-task MariaDB run sampling peak memory. (In a run of 3,000, the
    start alone, up to a scheduler interval and an idle worker's poll interval, was a fifth of the time.)"""
    from bench import end_to_end

    if not quick:
        return end_to_end.run(services, quick=False, links=50, memory_tasks=100_000, default_slots=True)
    return (end_to_end.run(services, quick=True, backends=("mariadb",), tasks=QUICK_TASKS, links=20, default_slots=True)
            + end_to_end.run(services, quick=True, backends=("postgresql", "sqlite"), tasks=1000, links=10))


#: The most attempts a worker claims at once by default (``worker --prefetch``): the batch size it really uses.
WORKER_BATCH = 100


def run_ours(services: Services, quick: bool) -> list[Result]:
    """Our queues at 1 and 10 per claim, and the SQL claim at a worker's own batch size, 4 processes."""
    from bench import queue_claim

    return (queue_claim.run(services, quick)
            + queue_claim.run(services, quick, backends=("mariadb",), process_counts=(4,), limits=(WORKER_BATCH,),
                              queues=("sql",)))


def run_suite(services: Services, quick: bool, only: set | None = None) -> list[Result]:
    from bench import limits, many_workers, peers, pg_churn, scale, seed_claim

    steps = [
        ("limits", lambda: limits.run(services, quick)),
        ("seed", lambda: seed_claim.run(services, quick)),
        ("ours", lambda: run_ours(services, quick)),
        ("end_to_end", lambda: run_end_to_end(services, quick)),
        ("peers", lambda: peers.run(services, quick, jobs=QUICK_TASKS if quick else None)),
        ("scale", lambda: scale.run(services, quick)),
        ("pg_churn", lambda: pg_churn.run(Services.from_environment(database_suffix="_pg_churn"), quick)),
        ("many_workers", lambda: many_workers.run(Services.from_environment(database_suffix="_many_workers"), quick)),
    ] + [(group, (lambda file=file, group=group: run_external(file, group, quick))) for file, group in EXTERNAL_SCRIPTS]
    results: list[Result] = []
    for name, step in steps:
        if only and name not in only:
            continue
        started = time.time()
        print("== %s ..." % name, flush=True)
        try:
            produced = step()
        except Exception as error:  # one broken benchmark must not lose the others' results
            import traceback

            traceback.print_exc()
            produced = [Result(name, "benchmark %s" % name, "-", None, "", note="failed: %s" % str(error)[:200])]
        results += produced
        print("   %s: %d results in %.0f s" % (name, len(produced), time.time() - started), flush=True)
    return results


def run_external(file: str, group: str, quick: bool) -> list[Result]:
    """Run another benchmark script of bench/ and take its results.

    A module with ``run(services, quick)`` returning :class:`Result` objects is called directly, with
    databases named after it (``eas_bench_<name>``). Otherwise the script runs as a command, with
    ``--quick`` in quick mode and ``--json FILE`` when its ``--help`` offers them; the file may hold a list of
    objects with at least ``name``, ``value`` and ``unit``. Without either its printed output is kept.
    """
    import importlib

    path = os.path.join(PROJECT_ROOT, "bench", file)
    if not os.path.exists(path):
        return []
    module = importlib.import_module("bench." + file[:-3])
    if callable(getattr(module, "run", None)):
        return list(module.run(Services.from_environment(database_suffix="_" + file[:-3]), quick))
    help_text = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                               timeout=120).stdout
    command = [sys.executable, path]
    if quick and "--quick" in help_text:
        command.append("--quick")
    json_path = None
    if "--json" in help_text:
        json_path = tempfile.mktemp(suffix=".json", prefix="eas_bench_%s_" % group)
        command += ["--json", json_path]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=3600)
    if completed.returncode != 0:
        return [Result(group, file, "-", None, "", note="failed: exit %d: %s" % (
            completed.returncode, (completed.stderr.strip().splitlines() or [""])[-1][:200]))]
    if json_path and os.path.exists(json_path):
        with open(json_path) as handle:
            loaded = json.load(handle)
        os.unlink(json_path)
        items = loaded.get("results", loaded) if isinstance(loaded, dict) else loaded
        results = []
        for item in items if isinstance(items, list) else []:
            value = item.get("value")
            results.append(Result(group, str(item.get("name", file)), str(item.get("backend", "-")),
                                  float(value) if isinstance(value, (int, float)) else None, str(item.get("unit", "")),
                                  processes=item.get("processes"), jobs=item.get("jobs"),
                                  note=str(item.get("note", "")) if value is not None else "failed: no value",
                                  extra={k: v for k, v in item.items() if k not in ("name", "value", "unit", "backend")}))
        return results
    return [Result(group, file, "-", None, "", note="skipped: no --json output", extra=dict(stdout=completed.stdout[-4000:]))]


# -- targets --------------------------------------------------------------------------------------------------

def _find(results: list[Result], group: str, backend: str | None = None, processes: int | None = None,
          contains: str = "") -> Result | None:
    for result in results:
        if (result.group == group and (backend is None or result.backend == backend) and result.value is not None
                and (processes is None or result.processes == processes) and contains in result.name):
            return result
    return None


def targets(results: list[Result]) -> list[dict]:
    """The performance targets as ratios measured in this run."""
    rows = []

    def ratio(name: str, numerator: Result | None, denominator: Result | None, goal: float, relation: str = ">=",
              extra: str = "") -> None:
        if numerator is None or denominator is None or not denominator.value:
            rows.append(dict(target=name, ratio=None, goal="%s %g" % (relation, goal), met=None, detail="not measured"))
            return
        value = numerator.value / denominator.value
        met = value >= goal if relation == ">=" else value <= goal
        rows.append(dict(target=name, ratio=round(value, 3), goal="%s %g" % (relation, goal), met=met,
                         detail="%s / %s%s" % (format_value(numerator.value), format_value(denominator.value), extra)))

    e2e = _find(results, "end_to_end", "mariadb", 2, "end to end")
    ratio("end to end (MariaDB, 2 workers) / raw claim+complete limit (2 processes)", e2e,
          _find(results, "limits", "mariadb", 2, "1 job/claim"), 0.5)
    for what, seed_what in (("claim only (no completion), up to 10 jobs/claim", "claim only"),
                            ("claim + completion, 1 job/claim", "claim + completion"),
                            ("claim + completion, up to 10 jobs/claim", "claim + completion")):
        seed = _find(results, "seed", "mariadb", 4, seed_what)
        ours = _find(results, "ours", "mariadb", 4, "SQL queue: " + what)
        duplicates = [r.duplicates for r in (ours, seed) if r is not None]
        ratio("our SQL %s (MariaDB, 4 processes) / seed algorithm" % what.replace(" (no completion)", ""), ours,
              seed, 5.0, extra="; duplicate claims: ours %s, seed %s" % (
                  ours.duplicates if ours else "-", seed.duplicates if seed else "-") if duplicates else "")
    ratio("end to end (MariaDB) / RQ SimpleWorker", e2e, _find(results, "peers", "redis", contains="SimpleWorker"), 1.0)
    celery = [r for r in results if r.group == "peers" and "Celery" in r.name and r.value is not None]
    ratio("end to end (MariaDB, 2 workers) / Celery prefork(2), defaults", e2e,
          next((r for r in celery if "acks_late" not in r.name), None), 1.0)
    ratio("end to end (MariaDB, 2 workers) / Celery prefork(2), acks_late + prefetch 1", e2e,
          next((r for r in celery if "acks_late" in r.name), None), 1.0)
    cpu = _find(results, "end_to_end", "mariadb", 2, "controller CPU per task (")
    if cpu is None:
        rows.append(dict(target="controller CPU per null task (MariaDB, 2 workers: workers + children + scheduler + "
                         "database server)", ratio=None, goal="<= 1 ms", met=None, detail="not measured"))
    else:
        parts = cpu.extra.get("cpu_ms_per_task", {})
        rows.append(dict(target="controller CPU per null task (MariaDB, 2 workers: workers + children + scheduler + "
                         "database server)", ratio=round(cpu.value, 3), goal="<= 1 ms", met=cpu.value <= 1.0,
                         detail="ms per task: " + ", ".join("%s %.2f" % (k, v) for k, v in sorted(parts.items()))))
    ratio("end to end through the AMQP queue / through the SQL queue (MariaDB, 2 workers)",
          _find(results, "end_to_end", "amqp", 2, "end to end"), e2e, 0.8)
    seed_claims = _find(results, "seed", "mariadb", 4, "claim only")
    ours_batch = _find(results, "ours", "mariadb", 4, "SQL queue: claim only (no completion), up to %d jobs/claim"
                       % WORKER_BATCH)
    ratio("our SQL claim at a worker's batch size (up to %d/claim, MariaDB, 4 processes) / seed algorithm"
          % WORKER_BATCH, ours_batch, seed_claims, 5.0, extra="; duplicate claims: ours %s, seed %s" % (
              ours_batch.duplicates if ours_batch else "-", seed_claims.duplicates if seed_claims else "-"))
    churned = _find(results, "pg_churn", "postgresql", contains="claims churned (median")
    fresh = _find(results, "pg_churn", "postgresql", contains="fresh queue table")
    ratio("PostgreSQL claim latency after %s claims churned / fresh table" % (
        "{:,}".format(churned.jobs) if churned and churned.jobs else "N"), churned, fresh, 1.2, "<=")
    for backend in BACKENDS:
        for metric, label in (("claim latency", "claim latency"), ("scheduler pass promoting", "scheduler pass")):
            big = _find(results, "scale", backend, contains="%s" % metric)
            small_results = [r for r in results if r.group == "scale" and r.backend == backend and metric in r.name
                             and r.value is not None]
            if len(small_results) < 2:
                continue
            small, big = small_results[0], small_results[-1]
            ratio("%s at %s / at %s finished tasks (%s)" % (label, "{:,}".format(big.jobs), "{:,}".format(small.jobs),
                                                            BACKEND_LABELS[backend]), big, small, 1.2, "<=")
    return rows


def render(results: list[Result], target_rows: list[dict], facts: dict, command: str) -> str:
    from tabulate import tabulate

    lines = ["Run %s on %s (%d cores, %s GiB; %s); %s" % (
        facts["date"], facts["cpu"], facts["cores"], facts["memory_gb"], facts["os"], ", ".join(
            "%s %s" % (name, version) for name, version in sorted(facts["servers"].items()) if version)),
        "Command: %s" % command, ""]
    rows = [(r.group, r.name, BACKEND_LABELS.get(r.backend, r.backend), r.processes or "",
             "-" if r.value is None else format_value(r.value), r.unit, "" if r.duplicates is None else r.duplicates,
             r.note) for r in results]
    lines.append(tabulate(rows, headers=("group", "measurement", "backend", "procs", "value", "unit", "dup", "note"),
                          tablefmt="github"))
    lines += ["", tabulate([(row["target"], "-" if row["ratio"] is None else row["ratio"], row["goal"],
                             {True: "yes", False: "NO", None: "-"}[row["met"]], row["detail"]) for row in target_rows],
                           headers=("target", "ratio", "goal", "met", "detail"), tablefmt="github")]
    return "\n".join(lines)


def update_docs(table: str, path: str = DOCS_PATH) -> None:
    """Replace the block between our markers in docs/performance.md (other sections stay as they are)."""
    text = open(path).read() if os.path.exists(path) else "# Performance\n\n"
    block = "%s\n%s\n%s" % (DOCS_START, table, DOCS_END)
    if DOCS_START in text and DOCS_END in text:
        before = text.split(DOCS_START)[0]
        after = text.split(DOCS_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n## Latest results\n\n" + block + "\n"
    with open(path, "w") as handle:
        handle.write(text)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: the whole suite in about 10 minutes")
    parser.add_argument("--only", action="append", metavar="GROUP",
                        help="run only these groups: limits, seed, ours, end_to_end, peers, scale, pg_churn, "
                             "many_workers, expansion, scheduler_scale (repeatable)")
    parser.add_argument("--output", help="JSON file to write (default bench/results/run-<time>[-quick].json)")
    parser.add_argument("--update-docs", action="store_true",
                        help="also write the table into docs/performance.md (between its markers)")
    args = parser.parse_args(argv)
    services = Services.from_environment()
    command = "./bench/run_all.py" + (" --quick" if args.quick else "") + "".join(
        " --only %s" % group for group in args.only or ())
    facts = machine_facts()
    facts["servers"] = server_versions(services)
    facts["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    started = time.time()
    results = run_suite(services, args.quick, set(args.only) if args.only else None)
    facts["duration_s"] = round(time.time() - started)
    target_rows = targets(results)
    table = render(results, target_rows, facts, command)
    print()
    print(table)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    output = args.output or os.path.join(RESULTS_DIR, "run-%s%s.json" % (
        datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), "-quick" if args.quick else ""))
    with open(output, "w") as handle:
        json.dump(dict(machine=facts, command=command, quick=args.quick, results=[r.to_dict() for r in results],
                       targets=target_rows), handle, indent=1, default=str)
    print("\nresults written to %s (%d s)" % (output, facts["duration_s"]))
    if args.update_docs:
        update_docs(table)
        print("table written to %s" % DOCS_PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
