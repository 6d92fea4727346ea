#!/usr/bin/env python3
"""Chaos run: a DAG of thousands of tasks with file products on a private MariaDB server while workers are
killed with SIGKILL and restarted, paused with SIGSTOP past their lease and resumed, the database server is
killed with SIGKILL and restarted and (``--queue amqp``) a private RabbitMQ node is restarted.

It then checks that every task was done exactly once (one succeeded attempt), that every product's md5 in
``eas_product_versions`` matches its file and that the file was made by that attempt, and reports tasks,
faults by kind, reruns, work rerun per fault, time to finish, lost tasks and tasks succeeded twice, as a
table and as JSON. Exit status 0 only when nothing was lost, nothing succeeded twice and every product is
right. Faults are spread over the run by progress (each at a random fraction of tasks done), reproducibly
for a given ``--seed``. See docs/reliability.md.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import use_project_environment

    use_project_environment()

import argparse
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time

from bench.chaos_report import FAULT_KINDS, problems_of, table, verify
from bench.common import PROJECT_ROOT, RESULTS_DIR
from bench.private_servers import PrivateMariaDB, PrivateRabbitMQ

FULL = dict(tasks=5000, workers=4, worker_kills=8, db_kills=1, stops=2)
QUICK = dict(tasks=40, workers=2, worker_kills=1, db_kills=0, stops=0)


def build_chain(count: int, rng: random.Random, seconds: tuple[float, float], size: int) -> dict:
    """``count`` tasks: groups of ten a -> b -> c file chains, each group joined by a task reading its ten c's."""
    task_list: list[dict] = []

    def step(name: str, inputs: dict, outputs: dict) -> None:
        task_list.append(dict(task="chaos_step", name=name, seconds=round(rng.uniform(*seconds), 3), bytes=size,
                              inputs=inputs, outputs=outputs))

    group = 0
    while len(task_list) < count:
        joined = {}
        for member in range(10):
            if count - len(task_list) < 4:
                break
            base = "g%d_%d" % (group, member)
            step(base + "_a", {}, {"a": base + "_a.txt"})
            step(base + "_b", {"a": base + "_a.txt"}, {"b": base + "_b.txt"})
            step(base + "_c", {"b": base + "_b.txt"}, {"c": base + "_c.txt"})
            joined["c%d" % member] = base + "_c.txt"
        if joined:
            step("g%d_join" % group, joined, {"j": "g%d_join.txt" % group})
        while not joined and len(task_list) < count:  # the last few: independent tasks
            step("single_%d" % len(task_list), {}, {"s": "single_%d.txt" % len(task_list)})
        group += 1
    return dict(job_name="chaos", working_directory="chaos", task_list=task_list)


def process_tree(pid: int) -> list:
    """The worker and every process below it: task children run in sessions of their own, so a process-group
    signal would miss them, and a lost machine loses them too."""
    import psutil

    try:
        worker = psutil.Process(pid)
        return [worker] + worker.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def signal_all(processes: list, signum: int) -> None:
    import psutil

    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


class Run:
    """The private servers, the scheduler and workers of one chaos run, and the faults done to them."""

    def __init__(self, args, work_dir: str):
        self.args = args
        self.work_dir = work_dir
        self.rng = random.Random(args.seed)
        self.database = PrivateMariaDB(os.path.join(work_dir, "mariadb"))
        self.broker = PrivateRabbitMQ() if args.queue == "amqp" else None
        self.data_dir = os.path.join(work_dir, "data")
        self.workers: dict[str, subprocess.Popen] = {}
        self.paused: set[str] = set()
        self.down: set[str] = set()  # killed, to be restarted
        self.scheduler: subprocess.Popen | None = None
        self.actions: list[tuple[float, str, object]] = []  # (when, what, callable): restarts and resumes
        self.faults = {kind: 0 for kind in FAULT_KINDS}
        self.unexpected = dict(worker=0, scheduler=0, start_refused_in_outage=0)
        self.outage = False
        self.last_outage = 0.0  # monotonic time the last outage ended (or now, while one lasts)
        self.started_at: dict[str, float] = {}
        self.events: list[str] = []
        self.engine = None
        self.last_action = 0.0  # when the last restart or resume was done

    # -- set-up -----------------------------------------------------------------------------------------
    def environment(self) -> dict:
        env = {key: value for key, value in os.environ.items() if not key.startswith("EAS_")}
        env.update(EAS_DB_URL=self.database.url, EAS_DATA_DIR=self.data_dir, PYTHONUNBUFFERED="1",
                   EAS_CONFIG=os.path.join(self.work_dir, "settings.yaml"), EAS_QUEUE=self.args.queue,
                   EAS_AMQP_QUEUE_PREFIX="eas_chaos.")
        if self.broker:
            env["EAS_AMQP_URL"] = self.broker.url
        for flag, variable in (("lease_seconds", "EAS_LEASE_SECONDS"), ("max_attempts", "EAS_MAX_ATTEMPTS"),
                               ("retry_backoff", "EAS_RETRY_BACKOFF_SECONDS"),
                               ("max_lost_attempts", "EAS_MAX_LOST_ATTEMPTS")):
            if getattr(self.args, flag) is not None:
                env[variable] = str(getattr(self.args, flag))
        return env

    def command(self, *words: str) -> None:
        completed = subprocess.run([sys.executable, "-m", "eas_controller", *words], cwd=PROJECT_ROOT,
                                   env=self.environment(), capture_output=True, text=True, timeout=600)
        if completed.returncode != 0:
            raise RuntimeError("%s failed:\n%s%s" % (" ".join(words), completed.stdout, completed.stderr))

    def set_up(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        self.database.create()
        if self.broker:
            self.broker.create()
        self.command("init_schema", "--task-types", os.path.join(PROJECT_ROOT, "bench", "chaos_task_types.yaml"),
                     "--no-save")
        if self.broker:
            self.command("init_queues", "--no-save")
        from eas_controller.database.engine import make_engine

        self.engine = make_engine(self.database.url)

    def settings(self):
        from eas_controller.config import load_settings

        return load_settings(environ=self.environment())

    # -- processes --------------------------------------------------------------------------------------
    def _spawn(self, name: str, *words: str) -> subprocess.Popen:
        log = open(os.path.join(self.work_dir, "%s.log" % name), "a")
        process = subprocess.Popen([sys.executable, "-m", "eas_controller", *words], cwd=PROJECT_ROOT,
                                   env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)  # no terminal signals from us
        log.close()
        return process

    def start_worker(self, name: str) -> None:
        self.down.discard(name)
        self.started_at[name] = time.monotonic()
        self.workers[name] = self._spawn(name, "worker", "--name", name, "--concurrency", str(self.args.concurrency),
                                         "--cpus", str(self.args.concurrency), "--poll-interval", "0.2")

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("scheduler", "schedule_all_waiting_tasks", "--interval", "0.2")

    def check_processes(self) -> None:
        """A process that exited without being told to is a finding: count it and start it again."""
        for name, process in list(self.workers.items()):
            if name not in self.down and process.poll() is not None:
                if process.returncode == 2 and 0 <= self.last_outage - self.started_at[name] < 30:
                    # started (by us) just before or during an outage: it could not reach the server to begin
                    self.unexpected["start_refused_in_outage"] += 1
                    self.note("worker %s could not start during the outage (status 2); restarted" % name)
                else:
                    self.unexpected["worker"] += 1
                    self.note("worker %s exited by itself (status %s); restarted" % (name, process.returncode))
                self.start_worker(name)
        if self.scheduler.poll() is not None:
            self.unexpected["scheduler"] += 1
            self.note("scheduler exited by itself (status %s); restarted" % self.scheduler.returncode)
            self.start_scheduler()

    def later(self, delay: float, what: str, action) -> None:
        self.actions.append((time.monotonic() + delay, what, action))

    def pump(self) -> None:
        now = time.monotonic()
        for item in sorted(self.actions, key=lambda entry: entry[0]):
            if item[0] <= now:
                self.actions.remove(item)
                item[2]()
                self.last_action = time.monotonic()

    def note(self, text: str) -> None:
        line = "%s %s" % (time.strftime("%H:%M:%S"), text)
        self.events.append(line)
        if not self.args.quiet:
            print(line, flush=True)

    # -- faults -----------------------------------------------------------------------------------------
    def victim(self) -> str | None:
        """A live, running worker, preferably one with attempts running (so the fault costs something)."""
        candidates = [name for name, process in self.workers.items()
                      if name not in self.paused and name not in self.down and process.poll() is None]
        if not candidates:
            return None
        busy = []
        try:
            with self.engine.connect() as connection:
                busy = [row[0] for row in connection.exec_driver_sql(
                    "SELECT DISTINCT worker_name FROM eas_attempts WHERE state = 'running'")]
        except Exception:  # noqa: BLE001 - database down: any worker will do
            pass
        preferred = [name for name in candidates if name in busy]
        return self.rng.choice(preferred or candidates)

    def inject(self, kind: str) -> bool:
        if kind in ("worker_kill", "stop"):
            name = self.victim()
            if name is None:
                return False
            tree = process_tree(self.workers[name].pid)
            if kind == "worker_kill":
                signal_all(tree, signal.SIGKILL)
                self.workers[name].wait()
                self.down.add(name)
                delay = self.rng.uniform(0.5, 3.0)
                self.note("kill -9 worker %s and its %d task process(es); restart in %.1f s"
                          % (name, len(tree) - 1, delay))
                self.later(delay, "restart " + name, lambda: self.start_worker(name))
            else:
                signal_all(tree, signal.SIGSTOP)
                self.paused.add(name)
                pause = self.settings().lease_seconds * 1.5 + 2
                self.note("SIGSTOP worker %s and its %d task process(es) for %.0f s (past its lease)"
                          % (name, len(tree) - 1, pause))
                self.later(pause, "resume " + name, lambda: self.resume(name, tree))
        elif kind == "db_kill":
            self.database.kill()
            self.outage = True
            self.last_outage = time.monotonic()
            delay = self.rng.uniform(*self.args.db_outage)
            self.note("kill -9 the database server; restart in %.1f s" % delay)
            self.later(delay, "restart database", self.restart_database)
        elif kind == "broker_restart":
            self.outage = True
            self.last_outage = time.monotonic()
            self.note("restarting the RabbitMQ node")
            self.broker.stop()
            delay = self.rng.uniform(1.0, 4.0)
            self.later(delay, "start broker", self.restart_broker)
        self.faults[kind] += 1
        return True

    def resume(self, name: str, tree: list) -> None:
        signal_all(tree, signal.SIGCONT)
        self.paused.discard(name)
        self.note("SIGCONT worker %s" % name)

    def restart_database(self) -> None:
        self.database.start()
        self.outage, self.last_outage = False, time.monotonic()
        self.note("database server back")

    def restart_broker(self) -> None:
        self.broker.start()
        self.outage, self.last_outage = False, time.monotonic()
        self.note("RabbitMQ node back")

    # -- the run --------------------------------------------------------------------------------------------
    def progress(self):
        try:
            with self.engine.connect() as connection:
                rows = connection.exec_driver_sql(
                    "SELECT state, COUNT(*) FROM eas_tasks WHERE is_control = 0 GROUP BY state").all()
                attempts = connection.exec_driver_sql("SELECT COUNT(*) FROM eas_attempts").scalar()
        except Exception:  # noqa: BLE001 - the database is down or restarting
            return None
        return dict(rows), attempts

    def plan(self) -> list[tuple[float, str]]:
        kinds = (["worker_kill"] * self.args.worker_kills + ["stop"] * self.args.stops
                 + ["db_kill"] * self.args.db_kills + ["broker_restart"] * self.args.broker_restarts)
        self.rng.shuffle(kinds)
        thresholds = sorted(self.rng.uniform(0.05, 0.85) for _ in kinds)
        return list(zip(thresholds, kinds))

    def execute(self) -> dict:
        chain = build_chain(self.args.tasks, self.rng, tuple(self.args.task_seconds), self.args.product_bytes)
        chain_path = os.path.join(self.work_dir, "chaos.json")
        with open(chain_path, "w") as handle:
            json.dump(chain, handle)
        self.start_scheduler()
        for number in range(self.args.workers):
            self.start_worker("chaos-w%d" % number)
        started = time.time()
        self.command("submit", "--tasks", chain_path)
        self.note("submitted %d tasks" % len(chain["task_list"]))
        plan = self.plan()
        last_change, last_seen, last_print, stuck = time.monotonic(), None, 0.0, None
        while True:
            self.pump()
            if not self.outage:
                self.check_processes()
            seen = self.progress()
            now = time.monotonic()
            if seen is not None:
                counts, attempt_count = seen
                total = sum(counts.values())
                done = counts.get("done", 0)
                final = done + counts.get("failed", 0) + counts.get("cancelled", 0)
                active = sum(counts.get(state, 0) for state in ("ready", "queued", "running"))
                if (done, attempt_count, active) != last_seen:
                    last_seen, last_change = (done, attempt_count, active), now
                if plan and not self.outage and total and done / total >= plan[0][0]:
                    if self.inject(plan[0][1]):
                        plan.pop(0)
                if now - last_print > 10 and not self.args.quiet:
                    print("  %d/%d done, %d attempts, %s" % (done, total, attempt_count, counts), flush=True)
                    last_print = now
                # all final; a worker resumed or restarted just now gets a few seconds to try its stale writes
                if total and final == total and not self.actions and now - self.last_action > 5:
                    break
                if not self.actions and active == 0 and now - last_change > 15:
                    stuck = "no task ready, queued or running for 15 s; states %s" % counts
                    break
            if not self.actions and now - last_change > self.args.stuck_seconds:
                stuck = "nothing changed for %d s" % self.args.stuck_seconds
                break
            time.sleep(0.5)
        finished = time.time()
        self.stop_processes()
        report = verify(self.engine, self.data_dir)
        total_faults = sum(self.faults.values())
        report.update(faults=dict(self.faults), faults_total=total_faults,
                      faults_not_injected=[kind for _, kind in plan],
                      work_rerun_per_fault_s=round(report["work_rerun_s"] / total_faults, 2) if total_faults else 0.0,
                      time_to_finish_s=round(finished - started, 1), unexpected_exits=dict(self.unexpected),
                      stuck=stuck, events=self.events)
        return report

    def stop_processes(self) -> None:
        processes = list(self.workers.values()) + ([self.scheduler] if self.scheduler else [])
        for process in processes:
            if process.poll() is None:
                signal_all(process_tree(process.pid), signal.SIGCONT)
                process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                signal_all(process_tree(process.pid), signal.SIGKILL)
                process.wait()

    def tear_down(self) -> None:
        for process in list(self.workers.values()) + ([self.scheduler] if self.scheduler else []):
            if process.poll() is None:
                tree = process_tree(process.pid)
                signal_all(tree, signal.SIGCONT)
                signal_all(tree, signal.SIGKILL)
                process.wait()
        if self.engine is not None:
            self.engine.dispose()
        self.database.kill()
        if self.broker:
            self.broker.remove()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  bench/chaos.py --quick\n  bench/chaos.py --tasks 5000 "
                                            "--worker-kills 8 --db-kills 1\n  bench/chaos.py --queue amqp")
    parser.add_argument("--tasks", type=int, help="worker tasks in the DAG (default %d; --quick %d)"
                                                  % (FULL["tasks"], QUICK["tasks"]))
    parser.add_argument("--workers", type=int, help="worker processes (default %d; --quick %d)"
                                                    % (FULL["workers"], QUICK["workers"]))
    parser.add_argument("--concurrency", type=int, default=2, help="slots per worker (default 2)")
    parser.add_argument("--worker-kills", type=int, help="workers killed with SIGKILL and restarted (default %d; "
                                                         "--quick %d)" % (FULL["worker_kills"], QUICK["worker_kills"]))
    parser.add_argument("--stops", type=int, help="workers paused with SIGSTOP for 1.5 leases, then resumed "
                                                  "(default %d; --quick %d)" % (FULL["stops"], QUICK["stops"]))
    parser.add_argument("--db-kills", type=int, help="database server killed with SIGKILL and restarted "
                                                     "(default %d; --quick %d)" % (FULL["db_kills"], QUICK["db_kills"]))
    parser.add_argument("--broker-restarts", type=int, help="RabbitMQ node restarts (default 1 with --queue amqp)")
    parser.add_argument("--queue", choices=("sql", "amqp"), default="sql", help="queue implementation (default sql)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the DAG and the faults (default 1)")
    parser.add_argument("--lease-seconds", type=float, help="EAS_LEASE_SECONDS for this run (default: the product's)")
    parser.add_argument("--max-attempts", type=int, help="EAS_MAX_ATTEMPTS for this run (default: the product's)")
    parser.add_argument("--retry-backoff", type=float, help="EAS_RETRY_BACKOFF_SECONDS (default: the product's)")
    parser.add_argument("--max-lost-attempts", type=int,
                        help="EAS_MAX_LOST_ATTEMPTS: retries of attempts whose worker was lost, for a controller "
                             "that has this setting (default: the product's)")
    parser.add_argument("--task-seconds", type=float, nargs=2, default=(0.1, 0.5), metavar=("MIN", "MAX"),
                        help="each task sleeps a random time in this range (default 0.1 0.5)")
    parser.add_argument("--product-bytes", type=int, default=2000, help="size of each product (default 2000)")
    parser.add_argument("--db-outage", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"),
                        help="seconds the database server stays down (default 3 8)")
    parser.add_argument("--stuck-seconds", type=float, default=600, help="give up when nothing changed this long")
    parser.add_argument("--quick", action="store_true", help="tiny size (for the smoke test): %s" % QUICK)
    parser.add_argument("--output", help="JSON file to write (default bench/results/chaos-<date>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (kept anyway when the run fails)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.broker_restarts is None:
        args.broker_restarts = 1 if args.queue == "amqp" else 0
    if args.broker_restarts and args.queue != "amqp":
        parser.error("--broker-restarts needs --queue amqp")
    if args.tasks < 1 or args.workers < 1 or args.concurrency < 1:
        parser.error("--tasks, --workers and --concurrency must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    work_dir = tempfile.mkdtemp(prefix="eas_chaos_")
    run = Run(args, work_dir)
    missing = run.database.missing or (run.broker.missing if run.broker else None)
    if missing:
        print("error: %s" % missing, file=sys.stderr)
        return 2
    report = None
    try:
        run.set_up()
        settings = run.settings()
        report = run.execute()
    finally:
        run.tear_down()
    report["problems"] = problems_of(report)
    report.update(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), command="bench/chaos.py " + " ".join(argv),
                  settings=dict(queue=args.queue, workers=args.workers, concurrency=args.concurrency, seed=args.seed,
                                lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                                retry_backoff_s=settings.retry_backoff_s, task_seconds=list(args.task_seconds),
                                planned_faults=dict(worker_kill=args.worker_kills, stop=args.stops,
                                                    db_kill=args.db_kills, broker_restart=args.broker_restarts)))
    print(table(report))
    output = args.output or os.path.join(RESULTS_DIR, "chaos-%s.json" % time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as handle:
        json.dump(report, handle, indent=1)
    print("JSON: %s" % output)
    if report["problems"] or args.keep:
        print("work folder kept: %s" % work_dir)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
