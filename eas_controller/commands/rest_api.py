"""rest_api.py: serve the REST API alone (JSON over HTTP; the OpenAPI document at /api/openapi.json).

Reads are open; writes (submit, cancel, reschedule, hold, release) need Authorization: Bearer TOKEN with a
token listed under api_tokens in the settings file. Uses Flask's own server, enough for a few users on a
private network; put a WSGI server (gunicorn "eas_controller.web_interface.api:create_api_app(...)") in
front of it for more. See docs/rest_api.md."""

from __future__ import annotations

from eas_controller import cli

EPILOG = """examples:
  ./rest_api.py --port 8081                     on 127.0.0.1:8081
  ./rest_api.py --host 0.0.0.0 --port 8081      reachable from other machines
  curl http://127.0.0.1:8081/api/jobs"""


def build_parser():
    parser = cli.parser(__doc__, EPILOG)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    return parser


def serve(args) -> int:
    try:
        from eas_controller.web_interface.api import create_api_app
    except ImportError as error:
        raise cli.CommandError("the REST API needs Flask (pip install 'eas-controller[web]'): %s" % error) from None
    if not 0 < args.port < 65536:
        raise cli.CommandError("--port must be between 1 and 65535, not %d" % args.port)
    settings = cli.settings_from(args)
    cli.connect(settings)
    if not settings.api_tokens:
        print("note: no api_tokens in %s: every write will be refused" % settings.settings_path)
    print("REST API on http://%s:%d/api (OpenAPI document: /api/openapi.json)" % (args.host, args.port), flush=True)
    create_api_app(settings).run(host=args.host, port=args.port, threaded=True)
    return 0


main = cli.command(build_parser, serve)
