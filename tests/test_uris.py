"""Data by URI: inputs fetched from file://, http:// and s3://, outputs uploaded to s3:// atomically, shared files
(``resources.files``) fetched once per worker, and the chains refused at submission.

Real parts only: an ``http.server`` on a free loopback port serving a temporary folder, moto's standalone S3
server (``moto_server``) on another, real ``submit.py`` and real worker processes on SQLite, MariaDB and
PostgreSQL.
"""

import contextlib
import gzip
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from bench.private_servers import free_port
from conftest import make_environment
from eas_controller import uris
from eas_controller.database.schema import log_lines, product_versions, products, task_dependencies
from eas_controller.registry import RegistryError, parse_entry
from test_submit_and_run import attempts_of, job_tasks, run_workers, submit, write_chain

SHARED_BUCKET = "eas-test-shared"  # named by the read_shared_model type in tests/task_types_test.yaml


def wait_for_port(port: int, process: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path) as handle:
                pytest.fail("moto_server exited %s:\n%s" % (process.returncode, handle.read()[-3000:]))
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    pytest.fail("moto_server did not listen on port %d" % port)


class S3Server:
    """moto's S3 server in a process of its own, recording every request it serves."""

    def __init__(self, folder):
        self.port = free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.recording = os.path.join(str(folder), "moto_recording.jsonl")
        self.log_path = os.path.join(str(folder), "moto_server.log")
        environment = dict(os.environ, MOTO_ENABLE_RECORDING="1", MOTO_RECORDER_FILEPATH=self.recording)
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(
                [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment)
        wait_for_port(self.port, self.process, self.log_path)
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def bucket(self, name: str | None = None) -> str:
        name = name or "eas-%s" % uuid.uuid4().hex[:12]
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
            self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return "s3://%s/%s" % (bucket, key)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, bucket: str) -> list[str]:
        return sorted(item["Key"] for item in self.client.list_objects_v2(Bucket=bucket).get("Contents", []))

    def requests(self, method: str, fragment: str) -> int:
        """How many ``method`` requests whose URL holds ``fragment`` the server has served."""
        with open(self.recording) as handle:
            entries = [json.loads(line) for line in handle if line.strip()]
        return sum(1 for entry in entries if entry["method"] == method and fragment in entry["url"])


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server, with the dummy credentials and its endpoint in the environment the workers inherit."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "EAS_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server


@pytest.fixture
def web(tmp_path):
    """An HTTP server on a free loopback port serving a temporary folder: (base URL, folder)."""
    folder = tmp_path / "web"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1], folder
    server.shutdown()
    server.server_close()
    thread.join(10)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def versions_of(eas, task_id: int) -> list:
    with eas.engine.connect() as connection:
        return connection.execute(
            sa.select(products.c.semantic_type, products.c.relative_path, products.c.state, product_versions.c.path,
                      product_versions.c.size, product_versions.c.md5)
            .join(product_versions, product_versions.c.product_id == products.c.id)
            .where(products.c.task_id == task_id)).all()


def log_text(eas, task_id: int) -> str:
    with eas.engine.connect() as connection:
        return "\n".join(connection.execute(sa.select(log_lines.c.message).where(log_lines.c.task_id == task_id)
                                            .order_by(log_lines.c.id)).scalars())


@pytest.fixture(params=["sqlite", "mysql"])
def eas_two(request, tmp_path):
    """SQLite and MariaDB (the checks that need not run on all three back ends)."""
    environment = make_environment(request.param, tmp_path, max_attempts=2, retry_backoff_s=0)
    yield environment
    environment.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def eas_pg(request, tmp_path):
    environment = make_environment(request.param, tmp_path)
    yield environment
    environment.engine.dispose()


# -- parsing and checking ---------------------------------------------------------------------------------

def test_uris_are_told_apart_from_file_names_and_checked():
    assert uris.is_uri("s3://bucket/key") and uris.is_uri("file:///tmp/a") and uris.is_uri("HTTPS://host/x")
    assert not uris.is_uri("lc_0.csv") and not uris.is_uri("a/b:c.txt") and not uris.is_uri(None)
    for good in ("s3://bucket/a/b.fits", "file:///data/x.txt", "http://host:8080/x?page=2", "https://host/"):
        uris.check(good)
    for bad, words in [("ftp://host/x", "unknown URI scheme 'ftp'"), ("s3://bucket", "s3://bucket/key"),
                       ("s3://bucket/dir/", "s3://bucket/key"), ("file://host/x", "file:///absolute/path"),
                       ("s3://AKIA:secret@bucket/key", "credentials are not accepted"),
                       ("https://user:pw@host/x", "credentials are not accepted"),
                       ("https://host/x?X-Amz-Signature=abc", "credentials are not accepted"),
                       ("http:///x", "names no host"), ("s3://bucket/a b", "space")]:
        with pytest.raises(uris.UriError, match=words.replace("?", r"\?")) as caught:
            uris.check(bad)
        assert "secret" not in str(caught.value) and "pw@" not in str(caught.value)
    with pytest.raises(uris.UriError, match="can only be read"):
        uris.check("https://host/x", writing=True)
    uris.check("s3://bucket/out.txt", writing=True)
    assert uris.check_file_spec("s3://b/model.fits.gz|gunzip") == ("s3://b/model.fits.gz", ("gunzip",))
    with pytest.raises(uris.UriError, match="unknown option 'unzip'"):
        uris.check_file_spec("s3://b/model.fits.gz|unzip")
    with pytest.raises(uris.UriError, match="is not a URI"):
        uris.check_file_spec("model.fits")


def test_registry_checks_shared_files():
    entry = {"command": "true", "resources": {"cpu": 1, "files": {"model": "s3://b/m.gz|gunzip"}}}
    assert parse_entry("t", entry, "my.yaml").resource_files == {"model": "s3://b/m.gz|gunzip"}
    assert parse_entry("t", {"command": "true"}, "my.yaml").as_row()["definition"].find("files") == -1
    for files, words in [({"model": "ftp://b/m"}, "resources.files.model: unknown URI scheme 'ftp'"),
                         ({"model": "s3://k:s@b/m"}, "resources.files.model: credentials are not accepted"),
                         (["s3://b/m"], "resources.files must be a mapping")]:
        with pytest.raises(RegistryError, match=words) as caught:
            parse_entry("t", {"command": "true", "resources": {"files": files}}, "my.yaml")
        assert str(caught.value).startswith("my.yaml: task type 't'")


@pytest.mark.parametrize("field, value, words", [
    ("inputs", {"lc": "ftp://host/lc.csv"}, "field 'inputs.lc': unknown URI scheme 'ftp'"),
    ("inputs", {"lc": "s3://AKIAXXXX:hunter2@bucket/lc.csv"}, "field 'inputs.lc': credentials are not accepted"),
    ("outputs", {"lc": "https://host/lc.csv"}, "field 'outputs.lc': https:// can only be read"),
    ("outputs", {"lc": "('gopher://host/%d' % 1)"}, "field 'outputs.lc': unknown URI scheme 'gopher'"),
    ("resources", {"files": {"model": "s3://u:p@bucket/m.gz|gunzip"}},
     "field 'resources.files.model': credentials are not accepted"),
    ("resources", {"files": {"model": "sftp://host/m"}}, "field 'resources.files.model': unknown URI scheme"),
    ("resources", {"cpu": 2}, "field 'resources.cpu': a task in a chain may only add shared files here"),
])
def test_bad_uris_are_refused_at_submission(eas_sqlite, tmp_path, field, value, words):
    chain = {"task_list": [{"task": "null", "name": "first"},
                           {"task": "execution_conditional", "criterion": "(True)",
                            "task_list": [{"task": "shell", "name": "reader", "command": "true", field: value}]}]}
    path = write_chain(tmp_path, chain)
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", path, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: %s: task_list[1].task_list[0]: " % path) and words in lines[0], lines[0]
    assert "hunter2" not in result.stderr and "u:p@" not in result.stderr
    with eas_sqlite.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT COUNT(*) FROM eas_tasks")).scalar() == 0


def test_a_deferred_branch_with_a_bad_uri_is_refused_at_submission(eas_sqlite, tmp_path):
    chain = {"task_list": [
        {"task": "emit_metadata", "name": "decide", "values": {"go": True}},
        {"task": "execution_conditional", "requires_metadata_from": ["decide"],
         "criterion": "(requested_metadata['decide']['go'])",
         "task_list": [{"task": "shell", "command": "true", "inputs": {"x": "gs://bucket/x"}}]}]}
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, chain), check=False)
    assert result.returncode == 2 and "field 'inputs.x': unknown URI scheme 'gs'" in result.stderr, result.stderr


# -- file:// and http:// ----------------------------------------------------------------------------------

def test_file_and_http_inputs(eas, tmp_path, web):
    base, folder = web
    (folder / "part_b.txt").write_text("from the web\n")
    local = tmp_path / "outside" / "part a.txt"
    local.parent.mkdir()
    local.write_text("from a local file\n")
    file_uri = "file://" + str(local).replace(" ", "%20")
    published = tmp_path / "elsewhere" / "published.txt"
    published_uri, failed_uri = "file://" + str(published), "file://" + str(tmp_path / "elsewhere" / "failed.txt")
    chain = {"job_name": "uris_file_http", "working_directory": "web", "task_list": [
        {"task": "concatenate", "name": "join",
         "inputs": {"a": file_uri, "b": base + "/part_b.txt"}, "outputs": {"joined": "joined.txt"}},
        {"task": "copy_input_command", "name": "template", "inputs": {"source": base + "/part_b.txt"},
         "outputs": {"copy": "copy.txt"}},
        {"task": "shell", "name": "environment", "inputs": {"page": file_uri}, "outputs": {"copy": "copy_a.txt"},
         "command": "cp \"$EAS_INPUT_PAGE\" \"$EAS_OUTPUT_COPY\""},
        {"task": "write_text", "name": "to_file_uri", "text": "published", "outputs": {"text": published_uri}},
        {"task": "shell", "name": "fails_to_file_uri", "outputs": {"text": failed_uri},
         "command": "echo half > \"$EAS_OUTPUT_TEXT\"; exit 1"}]}
    job_id = submit(eas, chain, tmp_path)
    run_workers(eas, 1)
    tasks = job_tasks(eas, job_id)
    assert {name: row.state for name, row in tasks.items()} == {
        "join": "done", "template": "done", "environment": "done", "to_file_uri": "done",
        "fails_to_file_uri": "failed"}, \
        [log_text(eas, row.id) for row in tasks.values()]
    data_dir = eas.settings.data_dir
    with open(os.path.join(data_dir, "web", "joined.txt")) as handle:
        assert handle.read() == "from a local file\nfrom the web\n"
    with open(os.path.join(data_dir, "web", "copy.txt")) as handle:
        assert handle.read() == "from the web\n"
    with open(os.path.join(data_dir, "web", "copy_a.txt")) as handle:
        assert handle.read() == "from a local file\n"
    assert local.read_text() == "from a local file\n"  # read, not moved
    assert published.read_text() == "published"
    assert sorted(os.listdir(published.parent)) == ["published.txt"]  # nothing of the failed task, nothing partial
    (version,) = versions_of(eas, tasks["to_file_uri"].id)
    assert (version.path, version.size, version.md5) == (published_uri, 9, md5(b"published"))
    assert "fetched input b from %s/part_b.txt (13 bytes)" % base in log_text(eas, tasks["join"].id)


def test_unreachable_and_missing_inputs_fail_with_a_reason_and_are_retried(eas_two, tmp_path, web):
    base, _folder = web
    closed = free_port()  # nothing listens there
    chain = {"job_name": "uris_missing", "task_list": [
        {"task": "shell", "name": "missing", "command": "true", "inputs": {"page": base + "/nothing_here.txt"}},
        {"task": "shell", "name": "unreachable", "command": "true",
         "inputs": {"page": "http://127.0.0.1:%d/x.txt" % closed}},
        {"task": "shell", "name": "no_file", "command": "true", "inputs": {"data": "file:///nonexistent/eas/x.txt"}}]}
    job_id = submit(eas_two, chain, tmp_path)
    run_workers(eas_two, 1)
    tasks = job_tasks(eas_two, job_id)
    expected = {"missing": "input 'page': cannot read %s/nothing_here.txt: HTTP 404" % base,
                "unreachable": "input 'page': cannot read http://127.0.0.1:%d/x.txt: cannot connect:" % closed,
                "no_file": "input 'data': cannot read file:///nonexistent/eas/x.txt: it does not exist"}
    for name, words in expected.items():
        assert tasks[name].state == "failed"
        rows = attempts_of(eas_two, tasks[name].id)
        assert len(rows) == 2, name  # max_attempts 2: retried once, as any failure
        for row in rows:
            assert row.state == "failed" and row.error_text.startswith(words), row.error_text
            assert "Traceback" not in row.error_text and len(row.error_text.splitlines()) == 1


# -- s3:// ------------------------------------------------------------------------------------------------

def test_s3_pipeline_reads_and_writes_objects(eas, tmp_path, s3):
    bucket = s3.bucket()
    source = s3.put(bucket, "in/raw.txt", b"transit candidates\n")
    result_uri = "s3://%s/out/result.txt" % bucket
    chain = {"job_name": "uris_s3", "working_directory": "s3job", "task_list": [
        {"task": "shell", "name": "first", "inputs": {"raw": source}, "outputs": {"upper": "upper.txt"},
         "command": "tr a-z A-Z < \"$EAS_INPUT_RAW\" > \"$EAS_OUTPUT_UPPER\""},
        {"task": "shell", "name": "last", "inputs": {"upper": "upper.txt"}, "outputs": {"result": result_uri},
         "command": "cat \"$EAS_INPUT_UPPER\" \"$EAS_INPUT_UPPER\" > \"$EAS_OUTPUT_RESULT\"; echo done"},
        {"task": "copy_input_command", "name": "reader", "inputs": {"source": result_uri},
         "outputs": {"copy": "copy.txt"}}]}
    job_id = submit(eas, chain, tmp_path)
    tasks = job_tasks(eas, job_id)
    with eas.engine.connect() as connection:  # the reader waits for the producer of the URI, as for a file
        waits = connection.execute(sa.select(task_dependencies.c.requires_task_id, task_dependencies.c.kind)
                                   .where(task_dependencies.c.task_id == tasks["reader"].id)).all()
    assert [(row.requires_task_id, row.kind) for row in waits] == [(tasks["last"].id, "file")]
    assert tasks["reader"].state == "waiting"
    run_workers(eas, 2)
    tasks = job_tasks(eas, job_id)
    assert {name: row.state for name, row in tasks.items()} == {"first": "done", "last": "done", "reader": "done"}, \
        [log_text(eas, row.id) for row in tasks.values()]
    body = s3.get(bucket, "out/result.txt")
    assert body == b"TRANSIT CANDIDATES\n" * 2
    (version,) = versions_of(eas, tasks["last"].id)
    assert (version.relative_path, version.path, version.state) == (result_uri, result_uri, "made")
    assert (version.size, version.md5) == (len(body), md5(body))
    with open(os.path.join(eas.settings.data_dir, "s3job", "copy.txt"), "rb") as handle:
        assert handle.read() == body
    assert attempts_of(eas, tasks["reader"].id)[0].started_at >= attempts_of(eas, tasks["last"].id)[0].ended_at
    assert s3.keys(bucket) == ["in/raw.txt", "out/result.txt"]  # no temporary key left over


def test_failed_tasks_and_failed_uploads_leave_nothing_in_the_bucket(eas_two, tmp_path, s3):
    bucket = s3.bucket()
    chain = {"job_name": "uris_s3_failures", "task_list": [
        {"task": "shell", "name": "fails", "outputs": {"result": "s3://%s/fail/result.txt" % bucket},
         "command": "echo half > \"$EAS_OUTPUT_RESULT\"; exit 3"},
        {"task": "shell", "name": "no_bucket", "outputs": {"result": "s3://eas-no-such-bucket-%s/x.txt" % bucket},
         "command": "echo whole > \"$EAS_OUTPUT_RESULT\""},
        {"task": "shell", "name": "missing_input", "command": "true",
         "inputs": {"raw": "s3://%s/absent/raw.txt" % bucket}},
        {"task": "fault_qc_text", "name": "rejected", "text": "bad", "outputs": {"text": "s3://%s/qc/out.txt" % bucket}}]}
    job_id = submit(eas_two, chain, tmp_path)
    run_workers(eas_two, 1)
    tasks = job_tasks(eas_two, job_id)
    assert {name: row.state for name, row in tasks.items()} == {
        "fails": "failed", "no_bucket": "failed", "missing_input": "failed", "rejected": "failed"}
    assert s3.keys(bucket) == []  # nothing at the destination, nothing partial beside it
    assert attempts_of(eas_two, tasks["fails"].id)[-1].error_text == "command exited with status 3"
    upload_error = attempts_of(eas_two, tasks["no_bucket"].id)[-1].error_text
    assert upload_error.startswith("output 'result': cannot upload to s3://eas-no-such-bucket-%s/x.txt: " % bucket)
    assert "Traceback" not in upload_error
    assert attempts_of(eas_two, tasks["missing_input"].id)[-1].error_text == (
        "input 'raw': cannot read s3://%s/absent/raw.txt: it does not exist" % bucket)
    for name, task in tasks.items():
        if name != "rejected":
            assert versions_of(eas_two, task.id) == []
    attempt = attempts_of(eas_two, tasks["rejected"].id)[-1]
    kept = os.path.join(eas_two.settings.data_dir, "failed_qc", "attempt_%d" % attempt.id, "s3", bucket, "qc", "out.txt")
    with open(kept) as handle:  # a product that failed QC is kept aside locally, never uploaded
        assert handle.read() == "bad"
    assert [(v.state, v.path) for v in versions_of(eas_two, tasks["rejected"].id)][-1] == ("failed_qc", kept)


def test_a_gunzipped_shared_file_is_fetched_once_per_worker_and_shared(eas_pg, tmp_path, s3):
    model = b"model 1\n" + b"".join(b"coefficient %d\n" % i for i in range(200))
    s3.bucket(SHARED_BUCKET)
    key = "model-%s.txt.gz" % uuid.uuid4().hex[:8]  # the type's own file is model.txt.gz: one per test run
    s3.put(SHARED_BUCKET, "model.txt.gz", gzip.compress(model))
    spec = "s3://%s/%s|gunzip" % (SHARED_BUCKET, key)
    s3.put(SHARED_BUCKET, key, gzip.compress(model))
    before_type, before_own = s3.requests("GET", "/model.txt.gz"), s3.requests("GET", "/" + key)
    chain = {"job_name": "uris_shared", "task_list": [
        {"task": "read_shared_model", "name": "first", "outputs": {"copy": "first.txt"}},
        {"task": "read_shared_model", "name": "second", "outputs": {"copy": "second.txt"}},
        {"task": "copy_resource_command", "name": "own_a", "resources": {"files": {"model": spec}},
         "outputs": {"copy": "own_a.txt"}},
        {"task": "shell", "name": "own_b", "resources": {"files": {"model": spec}}, "outputs": {"copy": "own_b.txt"},
         "command": "cp \"$EAS_RESOURCE_MODEL\" \"$EAS_OUTPUT_COPY\""}]}
    job_id = submit(eas_pg, chain, tmp_path)
    run_workers(eas_pg, 1, "--concurrency", "2")
    tasks = job_tasks(eas_pg, job_id)
    assert {row.state for row in tasks.values()} == {"done"}, [log_text(eas_pg, row.id) for row in tasks.values()]
    for name in ("first", "second", "own_a", "own_b"):
        with open(os.path.join(eas_pg.settings.data_dir, "%s.txt" % name), "rb") as handle:
            assert handle.read() == model, name
    # one download of each shared file for the worker, whichever of its tasks asked first
    assert s3.requests("GET", "/model.txt.gz") - before_type == 1
    assert s3.requests("GET", "/" + key) - before_own == 1
    fetched = [name for name, row in tasks.items() if "fetched shared file model" in log_text(eas_pg, row.id)]
    assert len(fetched) == 2 and ({"first", "second"} & set(fetched)) and ({"own_a", "own_b"} & set(fetched))
    assert not os.path.exists(os.path.join(eas_pg.settings.data_dir, "cache")) or not os.listdir(
        os.path.join(eas_pg.settings.data_dir, "cache"))  # the worker removed its cache when it stopped


def test_shared_file_cache_is_keyed_by_uri_and_concurrency_safe(tmp_path, web):
    from eas_controller.worker.transfer import Transfer, TransferError

    base, folder = web
    (folder / "m.txt.gz").write_bytes(gzip.compress(b"weights\n"))
    transfer = Transfer(str(tmp_path / "cache"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(transfer.shared_file(base + "/m.txt.gz|gunzip")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    paths = {path for path, _fetched in results}
    assert len(paths) == 1 and sum(fetched for _path, fetched in results) == 1 and transfer.downloads == 1
    (path,) = paths
    assert open(path, "rb").read() == b"weights\n" and os.path.basename(path) == "m.txt"
    assert os.path.basename(os.path.dirname(path)) == uris.cache_key(base + "/m.txt.gz|gunzip")
    assert sorted(os.listdir(os.path.dirname(path))) == [".source", "m.txt"]  # no partial file left
    raw, fetched = transfer.shared_file(base + "/m.txt.gz")  # another key: the compressed bytes as they are
    assert fetched and raw != path and gzip.decompress(open(raw, "rb").read()) == b"weights\n"
    (folder / "plain.txt").write_text("not gzip")
    with pytest.raises(TransferError, match="cannot decompress"):
        transfer.shared_file(base + "/plain.txt|gunzip")
    transfer.close()
    assert not os.path.exists(str(tmp_path / "cache"))


def test_standalone_run_fetches_and_uploads(tmp_path, s3, web):
    """launch_standalone.py runs tasks with URIs as a worker does, with no database."""
    from conftest import PROJECT_ROOT

    base, folder = web
    (folder / "model.txt.gz").write_bytes(gzip.compress(b"shared\n"))
    bucket = s3.bucket()
    source = s3.put(bucket, "in.txt", b"input\n")
    task_file = write_chain(tmp_path, {"task_list": [
        {"task": "shell", "name": "both", "inputs": {"raw": source}, "outputs": {"out": "s3://%s/out.txt" % bucket},
         "resources": {"files": {"model": base + "/model.txt.gz|gunzip"}},
         "command": "cat \"$EAS_INPUT_RAW\" \"$EAS_RESOURCE_MODEL\" > \"$EAS_OUTPUT_OUT\""}]}, "standalone.json")
    script = os.path.join(PROJECT_ROOT, "eas_controller", "worker_orchestration", "launch_standalone.py")
    environment = dict(os.environ, EAS_CONFIG=str(tmp_path / "no_settings.yaml"), PYTHONUNBUFFERED="1")
    result = subprocess.run([script, "--task", task_file, "--data-dir", str(tmp_path / "data"), "--format", "json"],
                            cwd=os.path.dirname(script), env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (task,) = json.loads(result.stdout)["tasks"]
    assert task["state"] == "succeeded" and task["outputs"] == {"out": "s3://%s/out.txt" % bucket}
    assert s3.get(bucket, "out.txt") == b"input\nshared\n" and s3.keys(bucket) == ["in.txt", "out.txt"]


def test_publication_of_s3_products_is_taken_back_or_committed(tmp_path, s3):
    """What the completion transaction does with an uploaded product: move it into place keeping the object it
    replaces until commit; undo (the attempt turned out lost) puts that back and deletes unpublished uploads."""
    from eas_controller.worker.transfer import Publication, Transfer

    bucket = s3.bucket()
    final = s3.put(bucket, "product.txt", b"earlier version")
    transfer = Transfer()
    local = tmp_path / "new.txt"
    local.write_bytes(b"new version")

    def uploaded(suffix: str) -> str:
        temporary = "%s.partial-7-%s" % (final, suffix)
        transfer.upload(str(local), temporary)
        return temporary

    publication = Publication(transfer)
    temporary = uploaded("a")
    publication.expect({"text": {"upload": temporary}})
    publication.publish(temporary, final)
    publication.publish(temporary, final)  # a retry of the same transaction moves nothing twice
    assert s3.get(bucket, "product.txt") == b"new version"
    assert [key.split(".previous-")[0] for key in s3.keys(bucket)] == ["product.txt", "product.txt"]
    assert publication.undo() == 1
    assert s3.get(bucket, "product.txt") == b"earlier version" and s3.keys(bucket) == ["product.txt"]

    publication = Publication(transfer)
    temporary = uploaded("b")
    publication.expect({"text": {"upload": temporary}})
    publication.publish(temporary, final)
    publication.commit()
    assert s3.get(bucket, "product.txt") == b"new version" and s3.keys(bucket) == ["product.txt"]

    publication = Publication(transfer)  # uploaded, then the attempt was lost before its transaction
    publication.expect({"text": {"upload": uploaded("c")}})
    assert publication.undo() == 0
    assert s3.keys(bucket) == ["product.txt"]


def test_a_uri_made_by_an_earlier_job_is_waited_for(eas_sqlite, tmp_path):
    uri = "file://" + str(tmp_path / "shared" / "made_by_job_one.txt")
    first = submit(eas_sqlite, {"job_name": "one", "task_list": [
        {"task": "write_text", "name": "maker", "text": "from job one", "outputs": {"text": uri}}]}, tmp_path, "one.json")
    second = submit(eas_sqlite, {"job_name": "two", "task_list": [
        {"task": "copy_input_command", "name": "reader", "inputs": {"source": uri}, "outputs": {"copy": "copy.txt"}}]},
        tmp_path, "two.json")
    maker, reader = job_tasks(eas_sqlite, first)["maker"], job_tasks(eas_sqlite, second)["reader"]
    with eas_sqlite.engine.connect() as connection:
        waits = connection.execute(sa.select(task_dependencies.c.requires_task_id)
                                   .where(task_dependencies.c.task_id == reader.id)).scalars().all()
    assert waits == [maker.id] and reader.state == "waiting"
    run_workers(eas_sqlite, 1)
    assert job_tasks(eas_sqlite, second)["reader"].state == "done"
    with open(os.path.join(eas_sqlite.settings.data_dir, "copy.txt")) as handle:
        assert handle.read() == "from job one"


def test_s3_endpoint_setting(tmp_path):
    from eas_controller.config import ConfigError, load_settings

    path = tmp_path / "settings.yaml"
    path.write_text("s3_endpoint_url: http://minio.local:9000\n")
    assert load_settings(config_path=str(path), environ={}).s3_endpoint_url == "http://minio.local:9000"
    assert load_settings(config_path=str(path), environ={"EAS_S3_ENDPOINT_URL": "https://s3.example.org"}
                         ).s3_endpoint_url == "https://s3.example.org"
    with pytest.raises(ConfigError, match="s3_endpoint_url must be an http:// or https:// URL without credentials") \
            as caught:
        load_settings(config_path=str(path), environ={"EAS_S3_ENDPOINT_URL": "https://key:hunter2@s3.example.org"})
    assert "hunter2" not in str(caught.value)


# -- resuming a job that reads data from outside ------------------------------------------------------------

def resume_reasons(eas, chain: dict, tmp_path) -> dict[str, str]:
    """{task name: reason} from ``submit.py --resume --dry-run --format json``."""
    result = eas.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, chain), "--resume", "--dry-run",
                        "--format", "json")
    return {row["task_name"]: row["reason"] for row in json.loads(result.stdout)}


def test_a_resumed_job_reuses_tasks_whose_outside_data_is_unchanged_and_reruns_the_others(eas_two, tmp_path, s3, web):
    base, folder = web
    (folder / "page.txt").write_text("page, first version\n")
    local = tmp_path / "outside.txt"
    local.write_text("file, first version\n")
    bucket = s3.bucket()
    s3.put(bucket, "raw.txt", b"object, first version\n")
    sources = {"from_s3": "s3://%s/raw.txt" % bucket, "from_web": base + "/page.txt", "from_file": "file://%s" % local}
    chain = {"job_name": "uris_resume", "task_list": [
        {"task": "shell", "name": name, "inputs": {"raw": uri}, "outputs": {"copy": "%s.txt" % name},
         "command": "cp \"$EAS_INPUT_RAW\" \"$EAS_OUTPUT_COPY\""} for name, uri in sources.items()]}
    submit(eas_two, chain, tmp_path)
    run_workers(eas_two, 1)
    assert resume_reasons(eas_two, chain, tmp_path) == {name: "reused" for name in sources}

    s3.put(bucket, "raw.txt", b"object, second version\n")
    (folder / "page.txt").write_text("page, second version, longer\n")  # the server sends no ETag: a new length
    local.write_text("file, second version\n")
    assert resume_reasons(eas_two, chain, tmp_path) == {name: "changed input raw" for name in sources}

    result = eas_two.script("job_submission/submit.py", "--tasks", write_chain(tmp_path, chain), "--resume")
    assert "resume: 0 of 3 worker tasks reused, 3 to run" in result.stdout, result.stdout
    run_workers(eas_two, 1)
    with open(os.path.join(eas_two.settings.data_dir, "from_s3.txt")) as handle:
        assert handle.read() == "object, second version\n"
    assert resume_reasons(eas_two, chain, tmp_path) == {name: "reused" for name in sources}
