"""Data by URI: recognising and checking the URIs a chain or a registry gives for inputs, outputs and shared files.

A value is a URI when it begins with ``scheme://``; anything else is a plain file name, relative to the task's
working directory, as before. Schemes:

* ``file:///absolute/path`` — a file on the worker's machine (inputs, outputs, shared files);
* ``http://`` and ``https://`` — read only (inputs and shared files);
* ``s3://bucket/key`` — an object in S3 or an S3-compatible store (inputs, outputs, shared files), through
  ``fsspec`` and ``s3fs``.

Credentials never travel in a chain: a URI with ``user:password@`` (or a query parameter that carries a signature,
token or key) is refused; workers take them from their environment. A shared file may end in ``|gunzip``:
it is decompressed when fetched. Moving the bytes is :mod:`eas_controller.worker.transfer`'s job.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import urllib.parse
from typing import Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
READ_SCHEMES = ("file", "http", "https", "s3")
WRITE_SCHEMES = ("file", "s3")
#: what may follow a shared file's URI after ``|``
FETCH_OPTIONS = ("gunzip",)
#: query parameters that hold a credential (a presigned URL, a token): refused like ``user:password@``
_CREDENTIAL_PARAMETERS = ("x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature",
                          "awsaccesskeyid", "access_token", "token", "password", "secret", "sig", "key")
_SPACE = re.compile(r"[\s\x00-\x1f\x7f]")


class UriError(ValueError):
    """A URI that cannot be used; the text says why in one line (never showing a credential)."""


def is_uri(value: Any) -> bool:
    """Whether ``value`` is a URI (``scheme://...``) rather than a plain file name."""
    return isinstance(value, str) and _SCHEME.match(value) is not None


def scheme_of(uri: str) -> str:
    return _SCHEME.match(uri).group(1).lower()


def _redacted(uri: str) -> str:
    """The URI as it may be shown: credentials (before an ``@``) and the query replaced by ``***``."""
    scheme, _, rest = uri.partition("://")
    location, slash, path = rest.partition("/")
    if "@" in location:
        location = "***@" + location.rpartition("@")[2]
    path, question, _query = path.partition("?")
    return "%s://%s%s%s%s" % (scheme, location, slash, path, "?***" if question else "")


def check(uri: str, writing: bool = False) -> None:
    """Raise :class:`UriError` if ``uri`` cannot be read (or, with ``writing``, written) by a worker."""
    if _SPACE.search(uri):
        raise UriError("URI %r holds a space or a control character; encode it (%%20...)" % _redacted(uri))
    scheme = scheme_of(uri)
    if scheme not in READ_SCHEMES:
        raise UriError("unknown URI scheme %r in %r; supported: file://, http:// and https:// (read only), s3://"
                       % (scheme, _redacted(uri)))
    if writing and scheme not in WRITE_SCHEMES:
        raise UriError("%s:// can only be read, not written: %r; write outputs to file:// or s3://"
                       % (scheme, _redacted(uri)))
    parts = urllib.parse.urlsplit(uri)
    if "@" in parts.netloc:
        raise UriError("credentials are not accepted in a URI (%r); give them to the workers in their environment "
                       "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://)" % _redacted(uri))
    names = {name.lower() for name, _value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
    secret = sorted(names & set(_CREDENTIAL_PARAMETERS))
    if secret:
        raise UriError("credentials are not accepted in a URI (query parameter %r in %r); give them to the workers "
                       "in their environment" % (secret[0], _redacted(uri)))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UriError("file:// URIs name a file on the worker's machine: write file:///absolute/path, not %r"
                           % _redacted(uri))
        if not parts.path.startswith("/") or parts.path.endswith("/") or parts.query or parts.fragment:
            raise UriError("%r does not name a file (file:///absolute/path)" % _redacted(uri))
    elif scheme == "s3":
        key = parts.path.lstrip("/")
        if not parts.netloc or not key or key.endswith("/") or parts.query or parts.fragment:
            raise UriError("%r does not name an object: write s3://bucket/key" % _redacted(uri))
    elif not parts.hostname:
        raise UriError("%r names no host" % _redacted(uri))


def split_options(value: str) -> tuple[str, tuple[str, ...]]:
    """A shared file's ``uri|option|...`` as (uri, options); :class:`UriError` for an unknown option."""
    uri, *options = value.split("|")
    for option in options:
        if option not in FETCH_OPTIONS:
            raise UriError("unknown option %r after '|' in %r; known: %s" % (
                option, _redacted(uri), ", ".join(FETCH_OPTIONS)))
    return uri, tuple(options)


def check_file_spec(value: Any) -> tuple[str, tuple[str, ...]]:
    """A shared file (``resources.files`` entry): a readable URI, optionally followed by ``|gunzip``."""
    if not isinstance(value, str) or not value:
        raise UriError("must be a URI (file://, http(s):// or s3://, optionally ending in |gunzip), not %r" % (value,))
    uri, options = split_options(value)
    if not is_uri(uri):
        raise UriError("%r is not a URI: shared files are given as file:///path, http(s)://... or s3://bucket/key"
                       % uri)
    check(uri)
    return uri, options


def file_path(uri: str) -> str:
    """The local path a ``file://`` URI names."""
    return urllib.parse.unquote(urllib.parse.urlsplit(uri).path)


def basename(uri: str) -> str:
    """The last part of the URI's path (a name for the local copy)."""
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    return name if name not in ("", ".", "..") else "download"


def local_name(uri: str) -> str:
    """A relative path naming ``uri`` inside a folder: ``s3/bucket/key``, ``file/abs/path``, ``https/host/path``."""
    parts = urllib.parse.urlsplit(uri)
    path = posixpath.normpath("/" + urllib.parse.unquote(parts.path)).lstrip("/")
    return posixpath.join(scheme_of(uri), parts.netloc.replace("/", "_") or "localhost", path or "download")


def cache_key(value: str) -> str:
    """A folder name for a shared file in a cache: a hash of its URI and options."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
