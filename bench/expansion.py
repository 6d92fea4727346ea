#!/usr/bin/env python3
"""Expansion and submission rate of a large task chain: three nested for loops of null tasks (10 x 10 x 100 =
10,000 worker tasks, 10,112 tasks with the control-flow ones).

Two steps are timed separately, as ``submit.py`` runs them: *expansion* (validate the chain, unroll the loops,
evaluate each leaf's expressions, infer dependencies; pure Python, no database) and *submission* (write every
task, dependency and planned product in one transaction). Each repetition starts from an empty schema in the
benchmark's own database; after each, the rows are counted to check the chain expanded exactly. The
median of the repetitions is reported, in tasks per second (all tasks, control-flow included).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import statistics
import time

from bench.common import BACKENDS, Result, Services, fresh_schema, unavailable_reason


def nested_chain(outer: int, middle: int, inner: int) -> dict:
    """Three nested loops (values, linear range, log range) around a null task with an expression field and an
    output file, so that evaluation, file registration and planned products are all part of the cost."""
    return {"job_name": "expansion_bench", "working_directory": "expansion_bench", "task_list": [
        {"task": "execution_for_loop", "parameter": "a", "values": list(range(outer)), "task_list": [
            {"task": "execution_for_loop", "parameter": "b", "linear_range": [0.0, 1.0, middle], "task_list": [
                {"task": "execution_for_loop", "parameter": "c", "log_range": [1.0, 1000.0, inner], "task_list": [
                    {"task": "null", "name": "leaf", "label": "('%.3f' % metadata['c'])",
                     "outputs": {"out": "'out_{a_index}_{b_index}_{c_index}.txt'.format(**metadata)"}},
                ]}]}]}]}


def measure_once(url: str, shape: tuple[int, int, int]) -> dict:
    import sqlalchemy as sa

    from eas_controller.chains import expand_chain
    from eas_controller.database.engine import read_transaction, write_transaction
    from eas_controller.database.schema import products, task_dependencies, tasks
    from eas_controller.registry import load_registry
    from eas_controller.submission import submit_plan

    outer, middle, inner = shape
    engine = fresh_schema(url)
    try:
        with read_transaction(engine) as connection:
            registry = load_registry(connection)
        started = time.perf_counter()
        plan = expand_chain(nested_chain(outer, middle, inner), "expansion_bench.json", registry)
        expanded = time.perf_counter()
        with write_transaction(engine) as connection:
            submit_plan(connection, plan, {name: t.max_attempts for name, t in registry.items()})
        submitted = time.perf_counter()
        with read_transaction(engine) as connection:
            count = lambda table: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()  # noqa
            rows = dict(tasks=count(tasks), dependencies=count(task_dependencies), products=count(products),
                        leaves=connection.execute(sa.select(sa.func.count()).select_from(tasks).where(
                            tasks.c.task_type == "null", tasks.c.state == "ready")).scalar_one())
    finally:
        engine.dispose()
    leaves = outer * middle * inner
    expected = dict(tasks=1 + 1 + outer + outer * middle + leaves, leaves=leaves, products=leaves)
    expected["dependencies"] = expected["tasks"] - 1  # each task but the root is a child its parent waits for
    problems = ["%s: %d, expected %d" % (key, rows[key], expected[key]) for key in expected if rows[key] != expected[key]]
    return dict(tasks=len(plan.nodes), expand_s=expanded - started, submit_s=submitted - expanded,
                problems=problems)


def run(services: Services, quick: bool = False, backends=BACKENDS, repeat: int | None = None,
        shape: tuple[int, int, int] | None = None) -> list[Result]:
    """One row per back end and step; ``quick``: a 400-leaf chain, once (the smoke test's size)."""
    shape = shape or ((4, 5, 20) if quick else (10, 10, 100))
    repeat = repeat or (1 if quick else 3)
    leaves = shape[0] * shape[1] * shape[2]
    results = []
    for backend in backends:
        reason = unavailable_reason(services, backend)
        names = ("expansion (validate, unroll, evaluate; no database)", "submission (one transaction)",
                 "expansion + submission")
        if reason:
            results.extend(Result.skipped("chains", name, backend, reason, "tasks/s", jobs=leaves) for name in names)
            continue
        runs = [measure_once(services.sqlalchemy_url(backend, "expansion"), shape) for _ in range(repeat)]
        tasks = runs[0]["tasks"]
        problems = sorted({problem for run_ in runs for problem in run_["problems"]})
        expand_s = statistics.median(run_["expand_s"] for run_ in runs)
        submit_s = statistics.median(run_["submit_s"] for run_ in runs)
        total_s = statistics.median(run_["expand_s"] + run_["submit_s"] for run_ in runs)
        note = "; ".join(problems) if problems else "%d x %d x %d loops, counts checked" % shape
        for name, seconds in zip(names, (expand_s, submit_s, total_s)):
            results.append(Result("chains", name, backend, tasks / seconds, "tasks/s", processes=1, jobs=tasks,
                                  note=note, extra=dict(seconds=round(seconds, 3), leaves=leaves, repeat=repeat)))
    return results


def main(argv=None) -> int:
    import argparse

    from bench.common import print_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 4 x 5 x 20 chain instead of 10 x 10 x 100")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("OUTER", "MIDDLE", "INNER"), help="loop sizes")
    parser.add_argument("--repeat", type=int, help="repetitions per back end, the median shown (default 3; --quick 1)")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="only these back ends")
    args = parser.parse_args(argv)
    services = Services.from_environment(database_suffix="_expansion")
    results = run(services, args.quick, tuple(args.backend or BACKENDS), args.repeat,
                  tuple(args.shape) if args.shape else None)
    print_results(results)
    return 1 if any(result.note and "expected" in result.note for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
