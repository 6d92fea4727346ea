"""File products in the database: the products a plan promised and each version an attempt made."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eas_controller.database.schema import product_versions, products


def record_versions(connection: Connection, task_id: int, attempt_id: int, made: dict[str, dict]) -> None:
    """Record each output (semantic type -> {path, size, md5, qc_state, qc_message, state}) as a new version.

    ``state`` is what the product becomes: ``made`` (published), ``failed_qc``, or None to keep the
    product as it was (a file that passed QC in an attempt that failed on another output).
    """
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
        state = facts.get("state", "failed_qc" if facts.get("qc_state") == "failed" else "made")
        if state is not None:
            connection.execute(
                products.update().where(products.c.id == product_id).values(state=state, latest_version_id=version_id)
            )
