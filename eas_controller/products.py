"""File products: where they live, how they are staged, checked and recorded.

An implementation writes its outputs into a private staging folder; only after success, and only inside
the completion transaction that has checked the worker still owns the attempt, are they moved to
``<data dir>/<working_directory>/<filename>``, so a failed, late or duplicated attempt never leaves a
half-written file where readers look. Every move is recorded as a product version (path, size, md5,
QC state); an earlier version's row is kept, never overwritten silently (the file on disk is the newest).
A product that fails its QC check is not moved there: it goes to ``<data dir>/failed_qc/attempt_<id>/``
for inspection, its version row says ``qc_state = failed`` and the product ``state = failed_qc``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid



def product_path(data_dir: str, relative_path: str) -> str:
    return os.path.join(data_dir, relative_path)


def staging_path(work_dir: str, semantic_type: str, relative_path: str) -> str:
    """Where the implementation writes an output: private to the attempt, same base name as the product."""
    return os.path.join(work_dir, "outputs", semantic_type, os.path.basename(relative_path))


def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish(staged: str, final: str) -> None:
    """Move a staged file into place atomically (a rename within the destination's filesystem)."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    temporary = "%s.partial-%s" % (final, uuid.uuid4().hex[:8])
    shutil.move(staged, temporary)
    os.replace(temporary, final)


def quarantine_path(data_dir: str, attempt_id: int, relative_path: str) -> str:
    """Where a product that failed QC is kept for inspection (never where readers look)."""
    return os.path.join(data_dir, "failed_qc", "attempt_%d" % attempt_id, relative_path)


class Publication:
    """The files one completion moved into place, so that they can be taken back.

    The completion transaction publishes before it commits. If the commit's reply is lost with the
    connection and the retry finds the attempt no longer ours (its lease expired meanwhile), the files
    must not stay: :meth:`undo` puts back what was there before, unless a newer file already replaced
    ours. An earlier version is kept as a hard link until :meth:`commit`.
    """

    def __init__(self) -> None:
        self.moves: list[dict] = []
        self.tried = False  # a completion transaction has been attempted (for telling a lost reply apart)

    def publish(self, staged: str, final: str) -> None:
        for move in self.moves:
            if move["final"] == final and _inode(final) == move["inode"]:
                return  # an earlier try of this transaction already put it there
        os.makedirs(os.path.dirname(final), exist_ok=True)
        backup = None
        if os.path.exists(final):
            backup = "%s.previous-%s" % (final, uuid.uuid4().hex[:8])
            try:
                os.link(final, backup)
            except OSError:  # no hard links here: an undo then removes instead of restoring
                backup = None
        temporary = "%s.partial-%s" % (final, uuid.uuid4().hex[:8])
        shutil.move(staged, temporary)
        inode = _inode(temporary)
        os.replace(temporary, final)
        self.moves.append(dict(final=final, inode=inode, backup=backup))

    def quarantine(self, staged: str, path: str) -> None:
        if os.path.exists(staged):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.move(staged, path)

    def commit(self) -> None:
        for move in self.moves:
            if move["backup"]:
                _remove(move["backup"])
        self.moves = []

    def undo(self) -> int:
        """Take back the files this completion published; returns how many were taken back."""
        undone = 0
        for move in reversed(self.moves):
            if _inode(move["final"]) == move["inode"]:
                if move["backup"]:
                    os.replace(move["backup"], move["final"])
                else:
                    _remove(move["final"])
                undone += 1
            elif move["backup"]:
                _remove(move["backup"])
        self.moves = []
        return undone


def _inode(path: str):
    """What identifies the file at ``path`` now (inode numbers alone are reused)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
