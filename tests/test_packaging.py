"""The package as users install it: a wheel in a fresh virtual environment gives a working ``eas`` command."""

import json
import os
import re
import subprocess
import sys
import tomllib

from conftest import PROJECT_ROOT


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, "%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
        " ".join(map(str, command)),
        result.returncode,
        result.stdout[-4000:],
        result.stderr[-4000:],
    )
    return result


def test_pyproject_pins_agree_with_requirements():
    with open(os.path.join(PROJECT_ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    with open(os.path.join(PROJECT_ROOT, "requirements.txt")) as handle:
        pins = dict(
            re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", line).groups()
            for line in handle
            if re.match(r"[A-Za-z0-9]", line)
        )
    pins = {name.lower(): version for name, version in pins.items()}
    declared = list(project["dependencies"]) + [
        dep for deps in project["optional-dependencies"].values() for dep in deps
    ]
    assert declared
    for requirement in declared:
        name, version = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", requirement).groups()
        assert pins.get(name.lower()) == version, "%s in pyproject.toml, %s in requirements.txt" % (
            requirement,
            pins.get(name.lower()),
        )


def test_wheel_installs_and_runs_a_job_on_sqlite(tmp_path):
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(wheels),
            PROJECT_ROOT,
        ]
    )
    [wheel] = list(wheels.glob("eas_controller-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)])
    eas = str(venv / "bin" / "eas")
    data_dir = tmp_path / "data"
    work = tmp_path / "elsewhere"  # not the source tree: everything must come from the installed package
    work.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EAS_")}
    environment.update(EAS_DATA_DIR=str(data_dir), PYTHONPATH="")

    def eas_command(*args):
        return _run([eas, *args], cwd=work, env=environment)

    help_text = eas_command("--help").stdout
    for command in ("submit", "worker", "schedule_all_waiting_tasks", "init_schema", "display_job_tree"):
        assert command in help_text
    assert "--burst" in eas_command("worker", "--help").stdout
    eas_command("init_schema")
    chain = tmp_path / "job.json"
    chain.write_text(
        json.dumps(
            {
                "job_name": "packaged",
                "task_list": [{"task": "shell", "command": "echo packaged-$EAS_TASK_ID"}, {"task": "null"}],
            }
        )
    )
    assert "submitted job 1" in eas_command("submit", "--tasks", str(chain)).stdout
    scheduler = subprocess.Popen(
        [eas, "schedule", "--interval", "0.2"],
        cwd=work,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        eas_command("worker", "--burst", "--concurrency", "1")  # exits once the chain is finished
    finally:
        scheduler.terminate()
        scheduler.wait(60)
    tree = json.loads(eas_command("display_job_tree", "--format", "json", "--job-name", "packaged").stdout)
    assert {row["state"] for row in tree} == {"done"} and len(tree) == 3
    assert (data_dir / "eas.sqlite").exists()
    # the installed package carries the shipped registry and finds no source checkout
    site = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import eas_controller.registry as r, os; print(os.path.exists(r.SHIPPED_REGISTRY), r.SHIPPED_REGISTRY)",
        ],
        cwd=work,
        env=environment,
    ).stdout
    assert site.startswith("True") and str(venv) in site
