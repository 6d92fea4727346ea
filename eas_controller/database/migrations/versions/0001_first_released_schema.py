"""Schema version 1, the first released schema: every table as version 1 created it.

Frozen here as it was, as data: ``0001_first_released_schema.json`` lists each table (in creation order)
with its columns and indexes (never import the live table definitions into a revision: they move on). A
column is ``name type [primary key | required] [unique] [references table]``; the types are ``int``,
``bigint``, ``bigint*`` (BIGINT, but INTEGER on SQLite, where only an INTEGER primary key counts up),
``double``, ``bool``, ``text``, ``longtext`` (MEDIUMTEXT on MySQL and MariaDB) and ``string(N)``.

Revision ID: 0001
Revises:
"""

import json
import os
import re

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from eas_controller.database.migrate import record_version

revision = "0001"
down_revision = None

TABLES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "0001_first_released_schema.json")
TYPES = {
    "int": sa.Integer, "bigint": sa.BigInteger, "bigint*": sa.BigInteger().with_variant(sa.Integer, "sqlite"),
    "double": sa.Double, "bool": sa.Boolean, "text": sa.Text,
    "longtext": sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
}
_COLUMN = re.compile(r"^(\w+) (\S+)( primary key| required)?( unique)?( references (\w+))?$")


def column(spec: str) -> sa.Column:
    """The column a line of the tables file describes."""
    match = _COLUMN.match(spec)
    if match is None:
        raise ValueError("%s: cannot read the column %r" % (TABLES_FILE, spec))
    name, kind, key_or_required, unique, _references, table = match.groups()
    length = re.fullmatch(r"string\((\d+)\)", kind)
    column_type = sa.String(int(length.group(1))) if length else TYPES[kind]
    extra = [sa.ForeignKey("%s.id" % table)] if table else []
    primary = key_or_required == " primary key"
    return sa.Column(name, column_type, *extra, primary_key=primary, nullable=not (primary or key_or_required),
                     unique=bool(unique) or None, autoincrement=True if primary and not kind.startswith("string") else "auto")


def tables() -> list[dict]:
    with open(TABLES_FILE) as handle:
        return json.load(handle)


def upgrade() -> None:
    for table in tables():
        op.create_table(table["table"], *[column(spec) for spec in table["columns"]],
                        *[sa.Index(name, *columns) for name, *columns in table["indexes"]])
    record_version(op.get_bind(), 1)


def downgrade() -> None:
    for table in reversed(tables()):
        op.drop_table(table["table"])
