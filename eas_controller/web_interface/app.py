"""The Flask application: one engine on the configured database, the console's pages, and room for more.

``create_app(settings, extra_blueprints=())`` lets another part (a REST API, say) mount its own blueprints
on the same application and engine (``current_app.extensions["eas"]``).
"""

from __future__ import annotations

from typing import Iterable

from flask import Flask

from eas_controller.config import Settings


def create_app(settings: Settings, extra_blueprints: Iterable = (), engine=None) -> Flask:
    from eas_controller.database.engine import make_engine
    from eas_controller.web_interface.pages import pages

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["eas"] = dict(settings=settings, engine=engine or make_engine(settings.database_url))
    app.register_blueprint(pages)
    for blueprint in extra_blueprints:
        app.register_blueprint(blueprint)

    @app.after_request
    def headers(response):
        # Nothing is loaded from elsewhere; the policy makes sure of it (inline SVG and styles only).
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app
