"""Data by URI on a worker: inputs fetched before a task starts, outputs uploaded after it succeeded, shared files
fetched once per worker and kept in its cache.

* **Inputs** given as URIs are fetched into the attempt's private folder; the task sees a local path (the same
  ``EAS_INPUT_<TYPE>``, ``ctx.inputs``, ``{inputs[x]}`` as for files). One that cannot be fetched (missing,
  unreachable, refused) fails the attempt with a one-line reason, retried like any failure.
* **Outputs** given as ``s3://`` URIs are written locally by the task like any output. After success (and QC)
  each is uploaded to a temporary key next to its destination (``<key>.partial-<attempt>-<random>``); the
  completion transaction, which checks the worker still owns the attempt, moves it into place (copy, then delete)
  and records its size and md5 with the URI as its path. A failed task uploads nothing; a failed upload removes
  its temporary keys and fails the attempt. ``file://`` outputs are published like local products: renamed into
  place from a temporary name next to the destination.
* **Shared files** (``resources.files``, ``name: URI[|gunzip]``) are fetched into a cache folder of the worker's
  own, ``<data dir>/cache/<worker name>/<hash of the URI>/<file name>``, once per worker: downloaded to a
  temporary name in that folder, decompressed if ``|gunzip``, then renamed, so concurrent tasks and workers
  never see half a file. Tasks see them as ``EAS_RESOURCE_<NAME>``, ``ctx.resources[name]`` and
  ``{resources[name]}``. The folder is removed when the worker stops.

``s3://`` goes through ``fsspec`` and ``s3fs``; credentials come from the worker's environment (the usual
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``..., or any source boto reads), the service from the setting
``s3_endpoint_url`` or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. ``http(s)://`` uses the standard library.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
import uuid

from eas_controller import products, uris
from eas_controller.worker.execution import PreparedAttempt, variable_name

log = logging.getLogger("eas.worker")

#: seconds a connection to an HTTP or S3 server may take to answer before the transfer fails
TIMEOUT_S = 60.0
_BLOCK = 1 << 20


class TransferError(Exception):
    """Data could not be fetched or stored; the text is one line naming the URI and why (``reason``: the why)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _reason(error: BaseException) -> str:
    """Why a transfer failed, in a few words (no traceback)."""
    name = type(error).__name__
    if isinstance(error, FileNotFoundError):
        return "it does not exist"
    if isinstance(error, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(error, PermissionError) or "AccessDenied" in str(error):
        return "access denied"
    if name == "NoCredentialsError":
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the worker's environment"
    if isinstance(error, urllib.error.HTTPError):
        return "HTTP %d %s" % (error.code, error.reason)
    if isinstance(error, urllib.error.URLError):
        return "cannot connect: %s" % (error.reason,)
    if isinstance(error, TimeoutError):
        return "no answer within %g s" % TIMEOUT_S
    text = " ".join(str(error).split()) or name
    return text[:500] if name in text else "%s: %s" % (name, text[:500])


class Transfer:
    """One worker's transfers: its S3 connection, its cache of shared files."""

    def __init__(self, cache_dir: str | None = None, s3_endpoint_url: str | None = None):
        self.cache_dir = cache_dir
        self.s3_endpoint_url = s3_endpoint_url
        self.downloads = 0  # shared files fetched into the cache
        self._s3 = None
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    @classmethod
    def for_worker(cls, settings, name: str) -> "Transfer":
        """The transfers of the worker ``name``: its cache folder under the data directory."""
        folder = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "worker"
        return cls(os.path.join(settings.data_dir, "cache", folder), getattr(settings, "s3_endpoint_url", None))

    def close(self) -> None:
        """Remove the cache of shared files (the worker stops)."""
        if self.cache_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    # -- S3 ---------------------------------------------------------------------------------------------
    def s3(self):
        with self._lock:
            if self._s3 is None:
                try:
                    import s3fs
                except ImportError:
                    raise TransferError("s3:// URIs need the packages fsspec and s3fs on the worker "
                                        "(pip install 'eas-controller[uris]')") from None
                endpoint = (self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                            or os.environ.get("AWS_ENDPOINT_URL") or None)
                self._s3 = s3fs.S3FileSystem(
                    endpoint_url=endpoint, use_listings_cache=False, skip_instance_cache=True,
                    config_kwargs=dict(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S,
                                       retries={"max_attempts": 3, "mode": "standard"}))
            return self._s3

    @staticmethod
    def _key(uri: str) -> str:
        return uri[len("s3://"):]

    def _s3_call(self, what: str, uri: str, call, *args):
        try:
            return call(*args)
        except TransferError:
            raise
        except Exception as error:  # s3fs and botocore raise many kinds; each means this transfer failed
            reason = _reason(error)
            raise TransferError("cannot %s %s: %s" % (what, uri, reason), reason) from None

    # -- reading ----------------------------------------------------------------------------------------
    def fetch(self, uri: str, target: str) -> int:
        """Copy what ``uri`` names to the local file ``target`` (through a temporary name); returns its size."""
        try:
            uris.check(uri)
        except uris.UriError as error:
            raise TransferError(str(error)) from None
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = "%s.partial-%s" % (target, uuid.uuid4().hex[:8])
        scheme = uris.scheme_of(uri)
        try:
            if scheme == "file":
                try:
                    shutil.copyfile(uris.file_path(uri), partial)
                except OSError as error:
                    raise TransferError("cannot read %s: %s" % (uri, _reason(error))) from None
            elif scheme == "s3":
                fs = self.s3()
                self._s3_call("read", uri, fs.get_file, self._key(uri), partial)
            else:
                self._fetch_http(uri, partial)
            os.replace(partial, target)
        finally:
            _remove(partial)
        return os.path.getsize(target)

    def source_identity(self, uri: str) -> str:
        """What identifies the content at ``uri`` now, without fetching it (a resumed job compares it with what
        an earlier attempt read): a file's md5; an S3 object's ETag and size; an HTTP resource's ETag, or its
        Last-Modified and length ("" when the server sends neither: nothing to compare, so it counts as
        changed). :class:`TransferError` when it cannot be looked up."""
        scheme = uris.scheme_of(uri)
        if scheme == "file":
            try:
                return "md5:" + products.md5_of(uris.file_path(uri))
            except OSError as error:
                raise TransferError("cannot read %s: %s" % (uri, _reason(error))) from None
        if scheme == "s3":
            fs = self.s3()
            info = self._s3_call("look up", uri, fs.info, self._key(uri))
            return "etag:%s size:%s" % (info.get("ETag"), info.get("size"))
        request = urllib.request.Request(uri, method="HEAD", headers={"User-Agent": "eas-controller"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                headers = response.headers
        except (OSError, ValueError) as error:
            raise TransferError("cannot look up %s: %s" % (uri, _reason(error))) from None
        if headers.get("ETag"):
            return "etag:" + headers["ETag"]
        if headers.get("Last-Modified"):
            return "modified:%s length:%s" % (headers["Last-Modified"], headers.get("Content-Length"))
        return ""

    @staticmethod
    def _fetch_http(uri: str, partial: str) -> None:
        request = urllib.request.Request(uri, headers={"User-Agent": "eas-controller"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(partial, "wb") as handle:
                shutil.copyfileobj(response, handle, _BLOCK)
        except (OSError, ValueError) as error:  # HTTPError and URLError are OSErrors
            raise TransferError("cannot read %s: %s" % (uri, _reason(error))) from None

    def shared_file(self, spec: str) -> tuple[str, bool]:
        """The local path of a shared file (``URI[|gunzip]``), fetched into the cache unless it is there already;
        returns (path, whether it was fetched now)."""
        try:
            uri, options = uris.check_file_spec(spec)
        except uris.UriError as error:
            raise TransferError(str(error)) from None
        if not self.cache_dir:
            raise TransferError("this worker has no cache folder for shared files")
        key = uris.cache_key(spec)
        name = uris.basename(uri)
        if "gunzip" in options and name.endswith(".gz") and len(name) > 3:
            name = name[:-3]
        folder = os.path.join(self.cache_dir, key)
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path, False
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:  # one download per file, whichever slots ask at the same time
            if os.path.exists(path):
                return path, False
            downloaded = os.path.join(folder, ".partial-%s" % uuid.uuid4().hex[:12])
            unpacked = downloaded + ".gunzip"
            try:
                self.fetch(uri, downloaded)
                if "gunzip" in options:
                    try:
                        with gzip.open(downloaded, "rb") as source, open(unpacked, "wb") as target:
                            shutil.copyfileobj(source, target, _BLOCK)
                    except (OSError, EOFError) as error:
                        raise TransferError("cannot decompress %s (|gunzip): %s" % (uri, _reason(error))) from None
                    os.replace(unpacked, path)
                else:
                    os.replace(downloaded, path)
            finally:
                _remove(downloaded)
                _remove(unpacked)
            with open(os.path.join(folder, ".source"), "w") as handle:  # which URI this folder holds, for people
                handle.write(spec + "\n")
            self.downloads += 1
            return path, True

    # -- writing (s3://) --------------------------------------------------------------------------------
    def upload(self, local: str, uri: str) -> None:
        fs = self.s3()
        self._s3_call("write", uri, fs.put_file, local, self._key(uri))

    def move(self, source: str, destination: str) -> None:
        fs = self.s3()
        self._s3_call("move %s to" % source, destination, fs.mv, self._key(source), self._key(destination))

    def copy(self, source: str, destination: str) -> None:
        fs = self.s3()
        self._s3_call("copy %s to" % source, destination, fs.copy, self._key(source), self._key(destination))

    def exists(self, uri: str) -> bool:
        fs = self.s3()
        return bool(self._s3_call("look up", uri, fs.exists, self._key(uri)))

    def identity(self, uri: str):
        """What identifies the object at ``uri`` now (its ETag and size), or None if there is none."""
        fs = self.s3()
        try:
            info = fs.info(self._key(uri))
        except FileNotFoundError:
            return None
        except Exception as error:
            raise TransferError("cannot look up %s: %s" % (uri, _reason(error))) from None
        return info.get("ETag"), info.get("size")

    def remove(self, uri: str) -> None:
        """Delete the object at ``uri`` if it exists; a failure is logged, not raised (used when cleaning up)."""
        try:
            fs = self.s3()
            fs.rm_file(self._key(uri))
        except FileNotFoundError:
            pass
        except Exception as error:
            log.warning("could not remove %s: %s", uri, _reason(error))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _uploaded(uri: str) -> bool:
    """Whether an output at ``uri`` is uploaded before the completion (s3://), rather than renamed into place."""
    return uris.is_uri(uri) and uris.scheme_of(uri) != "file"


# -- one attempt ----------------------------------------------------------------------------------------
def fetch_for_attempt(prepared: PreparedAttempt, transfer: Transfer) -> None:
    """Fetch the attempt's URI inputs into its folder and its shared files into the cache, before it starts;
    :class:`TransferError` (one line naming the input or file) if one cannot be had."""
    prepared.transfer = transfer
    for semantic, uri in prepared.remote_inputs.items():
        try:
            size = transfer.fetch(uri, prepared.inputs[semantic])
        except TransferError as error:
            raise TransferError("input '%s': %s" % (semantic, error)) from None
        prepared.fetched[semantic] = dict(uri=uri, identity=_identity_of_fetched(transfer, uri, prepared.inputs[semantic]))
        prepared.logs.add("INFO", "worker", "fetched input %s from %s (%d bytes)" % (semantic, uri, size))
    for name, spec in sorted(prepared.resource_files.items()):
        try:
            path, fetched = transfer.shared_file(spec)
        except TransferError as error:
            raise TransferError("shared file '%s' (resources.files): %s" % (name, error)) from None
        prepared.resources[name] = path
        prepared.environment[variable_name("EAS_RESOURCE_", name)] = path
        if fetched:
            message = "fetched shared file %s from %s into the worker's cache (%d bytes)" % (
                name, spec, os.path.getsize(path))
            prepared.logs.add("INFO", "worker", message)
            log.info("%s", message)


def _identity_of_fetched(transfer: Transfer, uri: str, copy: str) -> str:
    """The source's identity (see :meth:`Transfer.source_identity`) as recorded for a resume: a file's is the
    md5 of the copy just made; a look-up that fails records "" (the task runs; a resume will run it again)."""
    if uris.scheme_of(uri) == "file":
        return "md5:" + products.md5_of(copy)
    try:
        return transfer.source_identity(uri)
    except TransferError as error:
        log.warning("input %s fetched, but its identity could not be looked up: %s", uri, error)
        return ""


def stage_uploads(prepared: PreparedAttempt, made: dict[str, dict]) -> None:
    """Upload each s3:// output (checked, passed QC) to a temporary key next to its destination, recorded as
    ``made[semantic]["upload"]``; on a failure remove what was uploaded and raise :class:`TransferError`."""
    targets = [semantic for semantic, facts in made.items() if _uploaded(facts["path"])]
    if not targets:
        return
    transfer = prepared.transfer if isinstance(prepared.transfer, Transfer) else Transfer()
    prepared.transfer = transfer
    uploaded = []
    for semantic in targets:
        facts = made[semantic]
        temporary = "%s.partial-%d-%s" % (facts["path"], prepared.attempt_id, uuid.uuid4().hex[:8])
        try:
            transfer.upload(facts["staged"], temporary)
        except TransferError as error:
            for uri in uploaded + [temporary]:
                transfer.remove(uri)
            for other in made.values():
                other.pop("upload", None)
            raise TransferError("output '%s': cannot upload to %s: %s" % (semantic, facts["path"], error.reason)) from None
        uploaded.append(temporary)
        facts["upload"] = temporary
        prepared.logs.add("INFO", "worker", "uploaded output %s (%d bytes) for %s" % (
            semantic, facts["size"], facts["path"]))


class Publication(products.Publication):
    """:class:`eas_controller.products.Publication` for products that are URIs too.

    ``file://`` products are local files (renamed into place, taken back by :meth:`undo`). ``s3://`` products
    arrive uploaded to a temporary key (:func:`stage_uploads`); :meth:`publish` moves that into place, keeping a
    copy of an earlier object there until :meth:`commit`, so :meth:`undo` can put it back. Uploads never
    published (the attempt was lost, recording failed) are deleted by :meth:`undo`.
    """

    def __init__(self, transfer: Transfer | None = None) -> None:
        super().__init__()
        self.transfer = transfer
        self.remote: list[dict] = []
        self.pending: set[str] = set()  # uploaded temporary keys not moved into place yet

    def expect(self, made: dict[str, dict]) -> None:
        """Note the temporary uploads of ``made``: published or, if it comes to that, deleted."""
        self.pending.update(facts["upload"] for facts in made.values() if facts.get("upload"))

    def _transfer(self) -> Transfer:
        if self.transfer is None:
            self.transfer = Transfer()
        return self.transfer

    def publish(self, staged: str, final: str) -> None:
        if not uris.is_uri(final):
            return super().publish(staged, final)
        if not _uploaded(final):
            return super().publish(staged, uris.file_path(final))
        for move in self.remote:
            if move["final"] == final and move["source"] == staged:
                return  # an earlier try of this transaction already put it there
        transfer = self._transfer()
        backup = None
        if transfer.exists(final):
            backup = "%s.previous-%s" % (final, uuid.uuid4().hex[:8])
            transfer.copy(final, backup)
        transfer.move(staged, final)
        self.pending.discard(staged)
        self.remote.append(dict(final=final, source=staged, identity=transfer.identity(final), backup=backup))

    def commit(self) -> None:
        super().commit()
        for move in self.remote:
            if move["backup"]:
                self._transfer().remove(move["backup"])
        for uri in self.pending:
            self._transfer().remove(uri)
        self.remote, self.pending = [], set()

    def undo(self) -> int:
        undone = super().undo()
        for move in reversed(self.remote):
            transfer = self._transfer()
            try:
                if transfer.identity(move["final"]) == move["identity"]:
                    if move["backup"]:
                        transfer.move(move["backup"], move["final"])
                    else:
                        transfer.remove(move["final"])
                    undone += 1
                elif move["backup"]:
                    transfer.remove(move["backup"])
            except TransferError as error:
                log.warning("could not take back %s: %s", move["final"], error)
        for uri in self.pending:
            self._transfer().remove(uri)
        self.remote, self.pending = [], set()
        return undone
