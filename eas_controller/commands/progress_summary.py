"""progress_summary.py: per task type, how many tasks are in each state and the percentage done.

With --watch it redraws in place every few seconds (for a `screen` session), with a progress bar and an
estimate of the time left from the recent completion rate."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./progress_summary.py --job-name hello_pipeline
  ./progress_summary.py --format json
  ./progress_summary.py --job-name big_sweep --watch --interval 10"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--job-name", help="only jobs with this name (default: every job)")
    parser.add_argument("--job-id", type=int, help="only this job")
    parser.add_argument("--include-control", action="store_true",
                        help="also count control-flow tasks (chains, loops, conditionals)")
    parser.add_argument("--watch", action="store_true", help="redraw in place until interrupted (Ctrl-C)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between redraws with --watch (default 5)")
    parser.add_argument("--count", type=int, default=None, help="with --watch: stop after this many redraws")
    cli.add_format_argument(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.interval <= 0:
        raise SystemExit("error: --interval must be positive")
    return cli.run(lambda: show(args))


def _summary(args):
    from eas_controller.views.progress import progress_summary

    return cli.read_view(args, lambda connection, _s: progress_summary(
        connection, args.job_name, args.job_id, args.include_control))


def show(args) -> int:
    from eas_controller.views.output import emit
    from eas_controller.views.progress import PROGRESS_COLUMNS

    if not args.watch:
        print(emit(_summary(args), args.format, PROGRESS_COLUMNS))
        return 0
    return watch(args)


def watch(args) -> int:
    import sys
    import time

    from eas_controller import states
    from eas_controller.views.output import emit
    from eas_controller.views.progress import PROGRESS_COLUMNS, RateTracker, bar

    tracker = RateTracker()
    drawn = 0
    while True:
        rows = _summary(args)
        total_row = rows[-1] if rows else None
        total = total_row["total"] if total_row else 0
        finished = sum(total_row[state] for state in states.TASK_FINAL_STATES) if total_row else 0
        now = time.time()
        tracker.add(now, finished)
        rate, eta = tracker.rate(), tracker.eta_s(total - finished)
        screen = [time.strftime("%Y-%m-%d %H:%M:%S"), emit(rows, "table", PROGRESS_COLUMNS), "",
                  "%s %d of %d finished (%.1f%%)" % (bar(finished / total if total else 0.0), finished, total,
                                                   100.0 * finished / total if total else 0.0),
                  "rate: %s   time left: %s" % ("%.2f tasks/s" % rate if rate is not None else "measuring...",
                                               _duration(eta) if eta is not None else "unknown")]
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        sys.stdout.write("\n".join(screen) + "\n")
        sys.stdout.flush()
        drawn += 1
        if args.count is not None and drawn >= args.count:
            return 0
        time.sleep(args.interval)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return "%dh%02dm%02ds" % (hours, minutes, seconds) if hours else "%dm%02ds" % (minutes, seconds)
