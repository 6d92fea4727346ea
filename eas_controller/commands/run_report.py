"""run_report.py: one self-contained HTML file about a job: summary, activity timeline, timings per task
type, failures and the pass/fail grid. It opens offline (no script, no external file), so it can be attached
to a paper or an e-mail."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """example:
  ./run_report.py --job-name hello_pipeline --output report.html"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--job-name", help="the job (the newest one of that name)")
    parser.add_argument("--job-id", type=int, help="the job with this id")
    parser.add_argument("--output", required=True, metavar="FILE", help="where to write the HTML file (- : stdout)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.job_name is None and args.job_id is None:
        raise SystemExit("error: give --job-name or --job-id")
    return cli.run(lambda: write(args))


def write(args) -> int:
    import sys

    from eas_controller.web_interface.report import report_html

    html = cli.read_view(args, lambda connection, _s: report_html(connection, args.job_name, args.job_id))
    if args.output == "-":
        sys.stdout.write(html)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(html)
    except OSError as error:
        raise cli.CommandError("cannot write %s: %s" % (args.output, error.strerror or error)) from None
    print("wrote %s (%d bytes)" % (args.output, len(html.encode("utf-8"))))
    return 0
