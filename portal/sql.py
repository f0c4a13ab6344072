"""Plain SQL for the few reads on a hot path (a launch runs each of them), where building the
query through the ORM costs several times what running it does.

The SQL is a constant next to the function that runs it; values are always parameters. What
comes back is converted as the ORM would convert it (decimals, datetimes, flags and JSON read
the same on PostgreSQL and SQLite), and rows can be made into model instances without another
query. Everything else goes through the ORM.
"""

import datetime
from collections.abc import Sequence
from decimal import Decimal
from functools import cache

from django.db import connection, models
from django.db.models.expressions import Col


@cache
def _converters(vendor: str, field: models.Field) -> tuple:
    """What the ORM applies to a value of ``field`` read on ``vendor``'s backend."""
    column = Col(field.model._meta.db_table, field)
    return tuple(connection.ops.get_db_converters(column) + field.get_db_converters(connection))


def _adapt(value):
    """A parameter as the ORM would pass it (SQLite keeps datetimes and decimals as text)."""
    if isinstance(value, datetime.datetime):
        return connection.ops.adapt_datetimefield_value(value)
    if isinstance(value, Decimal):
        return connection.ops.adapt_decimalfield_value(value)
    return value


def rows(sql: str, params: Sequence = (), fields: Sequence[models.Field | None] = ()) -> list[list]:
    """The rows of ``sql``, each a list; column *i* converted as ``fields[i]`` (a model field)
    is by the ORM, or left as the driver gives it where the field is None or missing."""
    with connection.cursor() as cursor:
        cursor.execute(sql, [_adapt(p) for p in params])
        fetched = cursor.fetchall()
    vendor = connection.vendor
    plan = [
        (i, _converters(vendor, f), Col(f.model._meta.db_table, f))
        for i, f in enumerate(fields)
        if f is not None
    ]
    result = []
    for raw in fetched:
        row = list(raw)
        for i, converters, column in plan:
            for convert in converters:
                row[i] = convert(row[i], column, connection)
        result.append(row)
    return result


def execute(sql: str, params: Sequence = ()) -> int:
    """Run a statement that returns no rows (an UPDATE); how many rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, [_adapt(p) for p in params])
        return cursor.rowcount


def placeholders(values: Sequence) -> str:
    """``%s, %s, ...``: one parameter mark for each of ``values`` (an ``IN (...)`` list)."""
    return ", ".join(["%s"] * len(values))


class Columns:
    """The columns of one model under a table alias, for a SELECT that reads several models in
    one query: ``columns.sql`` goes in the select list, ``columns.fields`` in ``rows()``, and
    ``columns.instance(row, start)`` makes the model instance from its part of a row (None for
    a LEFT JOIN that found nothing)."""

    def __init__(self, model: type[models.Model], alias: str):
        self.model = model
        self.fields = tuple(model._meta.concrete_fields)
        self.names = tuple(f.attname for f in self.fields)
        self.sql = ", ".join(f'{alias}."{f.column}"' for f in self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def instance(self, row: Sequence, start: int) -> models.Model | None:
        values = row[start : start + len(self.fields)]
        if values[0] is None:  # the primary key: nothing was joined
            return None
        return self.model.from_db(connection.alias, self.names, values)
