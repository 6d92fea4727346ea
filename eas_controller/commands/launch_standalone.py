"""launch_standalone.py: run one task, or a whole chain, on local files with no database, queue or server.

For authors of task implementations: the task runs exactly as a worker would run it (same child process,
environment, description, metadata and output checks), and its products land under the data directory
(default ./eas_standalone). --task takes a chain (JSON with task_list), a single task (JSON with task), or
the seed's .cfg test file. Inputs that no task in the file makes are taken from the data directory, or
copied in from the task file's folder or the current directory. Exits 0 only if every task succeeded."""

from __future__ import annotations

import json
import os

from eas_controller import cli

EPILOG = """examples:
  ./launch_standalone.py --task ../../demo_jobs/standalone/verify.json
  ./launch_standalone.py --task ../../demo_jobs/standalone/transit_search_tls.json --format json
  ./launch_standalone.py --task my_chain.json --task-types my_types.yaml --data-dir /tmp/try"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--task", required=True, metavar="FILE", help="the task, chain (JSON) or seed .cfg file to run")
    parser.add_argument("--task-types", action="append", default=[], metavar="FILE",
                        help="extra task-type registry (repeatable), as init_schema.py --task-types")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="how to print the result")
    parser.add_argument("--logs", action="store_true", help="also print each task's log lines")
    return parser


def main(argv: list[str]) -> int:
    return cli.run(lambda: launch_standalone(build_parser().parse_args(argv)))


def _cell(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 70 else text[:67] + "..."


def launch_standalone(args) -> int:
    from tabulate import tabulate

    from eas_controller.chains import expand_chain
    from eas_controller.registry import read_registries
    from eas_controller.standalone import SUCCEEDED, StandaloneRun, read_task_file

    if not os.path.isfile(args.task):
        raise cli.CommandError("--task %s: no such file" % args.task)
    settings = cli.settings_from(args)
    registry = read_registries(list(settings.task_type_files) + args.task_types)
    chain, source, files = read_task_file(args.task)
    plan = expand_chain(chain, source, registry.keys())
    data_dir = os.path.abspath(args.data_dir or "eas_standalone")
    search = [os.path.dirname(os.path.abspath(args.task)), os.getcwd()]
    run = StandaloneRun(registry, data_dir, search, files)
    run.add_plan(plan)

    def report(item) -> None:
        if args.format == "table":
            print("%-9s %s %s%s" % (item.state, item.node.task_type, item.node.chain_path or "",
                                    (": " + item.error.strip().splitlines()[-1]) if item.error else ""), flush=True)
            if args.logs:
                for _when, severity, stream, message in item.log_lines:
                    print("    [%s %s] %s" % (stream, severity, message))

    run.run(report)
    rows = run.summary()
    if args.format == "json":
        print(json.dumps({"data_dir": data_dir, "tasks": rows}, indent=1, sort_keys=True))
    else:
        table = []
        for row in rows:
            details = [("%s=%s" % (key, _cell(value))) for key, value in sorted(row["metadata"].items())]
            details += ["%s -> %s" % (semantic, os.path.relpath(path, data_dir)) for semantic, path in row["outputs"].items()]
            table.append([row["task_id"], row["task_type"], row["task_name"] or "", row["state"],
                          "\n".join(details) or (row["error"] or "").strip().splitlines()[-1:] and
                          (row["error"] or "").strip().splitlines()[-1]])
        print(tabulate(table, headers=["id", "type", "name", "state", "metadata / products / error"]))
        print("products under %s" % data_dir)
    return 0 if all(row["state"] == SUCCEEDED for row in rows) else 1
