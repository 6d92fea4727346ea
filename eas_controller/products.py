"""File products: where they live, how they are staged, checked and recorded.

An implementation writes its outputs into a private staging folder; only after success are they moved
to ``<data dir>/<working_directory>/<filename>``, so a failed or duplicated attempt never leaves a
half-written file where readers look. Every move is recorded as a product version (path, size, md5,
QC state); an earlier version's row is kept, never overwritten silently.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.schema import product_versions, products


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


def record_versions(connection: Connection, task_id: int, attempt_id: int, made: dict[str, dict]) -> None:
    """Record each output (semantic type -> {path, size, md5, qc_state, qc_message}) as a new version."""
    if not made:
        return
    planned = {
        row.semantic_type: row.id
        for row in connection.execute(
            sa.select(products.c.id, products.c.semantic_type).where(products.c.task_id == task_id)
        )
    }
    now = time.time()
    for semantic_type, facts in made.items():
        product_id = planned.get(semantic_type)
        if product_id is None:
            continue
        version_id = connection.execute(
            product_versions.insert().values(
                product_id=product_id, attempt_id=attempt_id, path=facts["path"], size=facts["size"], md5=facts["md5"],
                qc_state=facts.get("qc_state", "unchecked"), qc_message=facts.get("qc_message"), created_at=now,
            )
        ).inserted_primary_key[0]
        state = "failed_qc" if facts.get("qc_state") == "failed" else "made"
        connection.execute(
            products.update().where(products.c.id == product_id).values(state=state, latest_version_id=version_id)
        )
