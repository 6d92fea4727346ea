"""web_interface.py: the web console, read-only pages over the database (jobs, task tree, tasks and their
logs and products, timings, pass/fail grid, errors, progress and activity charts, workers and queues).

The REST API (docs/rest_api.md) is served by the same server under /api.
Listens on 127.0.0.1 only (--private, the default) unless --public is given. Everything the pages need is
served by the console itself, so it works on a cluster with no internet."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./web_interface.py                  (http://127.0.0.1:5000/)
  ./web_interface.py --public --port 8080"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--public", dest="public", action="store_true",
                       help="listen on every network interface (0.0.0.0)")
    group.add_argument("--private", dest="public", action="store_false",
                       help="listen on 127.0.0.1 only (the default)")
    parser.set_defaults(public=False)
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default 5000)")
    parser.add_argument("--threads", type=int, default=8, help="requests served at once (default 8)")
    return parser


def serve(args) -> int:
    from werkzeug.serving import make_server

    from eas_controller.web_interface.api import create_api_blueprint
    from eas_controller.web_interface.app import create_app

    settings = cli.settings_from(args)
    cli.connect(settings).dispose()  # a missing schema is one clear line, before listening
    app = create_app(settings, extra_blueprints=[create_api_blueprint(settings)])  # the REST API under /api
    host = "0.0.0.0" if args.public else "127.0.0.1"
    try:
        server = make_server(host, args.port, app, threaded=True)
    except OSError as error:
        raise cli.CommandError("cannot listen on %s:%d: %s" % (host, args.port, error.strerror or error)) from None
    print("web console on http://%s:%d/ (Ctrl-C stops it)" % (host, server.server_port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


main = cli.command(build_parser, serve)
