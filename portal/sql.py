"""Plain SQL for the few reads on a hot path (a launch runs each of them), where building the
query through the ORM costs several times what running it does.

The SQL is a constant next to the function that runs it; values are always parameters. What
comes back is converted as the ORM would convert it (decimals, datetimes, flags and JSON read
the same on PostgreSQL and SQLite), and rows can be made into model instances without another
query. On PostgreSQL they run on server-side binding cursors, so that psycopg prepares each
statement once it has run a few times on a connection (``DATABASE_PREPARED_STATEMENTS``, on by
default; turn it off behind a pooler that cannot keep prepared statements): a launch's
statements are then no longer planned again on every run. ``insert`` writes a new model instance's row the way ``save()`` would, and ``update`` some
fields of a saved one, for the rows every launch writes (the instance, its allocation, slot
claims, events, audit); models written through them have no ``save()`` of their own and no
signal receivers (or their caller does what the receiver would). Everything else goes through the ORM.
"""

import datetime
from collections.abc import Sequence
from decimal import Decimal
from functools import cache

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.models.expressions import Col


def _db():
    """The default connection itself (``django.db.connection`` is a proxy that looks it up on
    every attribute)."""
    return connections[DEFAULT_DB_ALIAS]


@cache
def _plan(vendor: str, fields: tuple) -> tuple:
    """For each field given: (column index, the ORM's converters for it on ``vendor``'s
    backend, the column expression they are called with)."""
    db = _db()
    plan = []
    for i, field in enumerate(fields):
        if field is None:
            continue
        column = Col(field.model._meta.db_table, field)
        converters = db.ops.get_db_converters(column) + field.get_db_converters(db)
        if converters:
            plan.append((i, tuple(converters), column))
    return tuple(plan)


def _adapt(db, value):
    """A parameter as the ORM would pass it (SQLite keeps datetimes and decimals as text)."""
    if isinstance(value, datetime.datetime):
        return db.ops.adapt_datetimefield_value(value)
    if isinstance(value, Decimal):
        return db.ops.adapt_decimalfield_value(value)
    return value


def _cursor(db):
    """A cursor that runs through Django's wrappers (errors, query logging and counting), on
    PostgreSQL with server-side binding when prepared statements are wanted."""
    if db.vendor != "postgresql" or not settings.DATABASE_PREPARED_STATEMENTS:
        return db.cursor()
    from psycopg import Cursor

    db.ensure_connection()
    with db.wrap_database_errors:
        raw = Cursor(db.connection)
    db.validate_thread_sharing()
    return db.make_debug_cursor(raw) if db.queries_logged else db.make_cursor(raw)


def rows(sql: str, params: Sequence = (), fields: Sequence[models.Field | None] = ()) -> list[list]:
    """The rows of ``sql``, each a list; column *i* converted as ``fields[i]`` (a model field)
    is by the ORM, or left as the driver gives it where the field is None or missing."""
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(sql, [_adapt(db, p) for p in params])
        fetched = cursor.fetchall()
    plan = _plan(db.vendor, tuple(fields))
    if not plan:
        return [list(raw) for raw in fetched]
    result = []
    for raw in fetched:
        row = list(raw)
        for i, converters, column in plan:
            for convert in converters:
                row[i] = convert(row[i], column, db)
        result.append(row)
    return result


def execute(sql: str, params: Sequence = ()) -> int:
    """Run a statement that returns no rows (an UPDATE); how many rows it changed."""
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(sql, [_adapt(db, p) for p in params])
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
        return self.model.from_db(DEFAULT_DB_ALIAS, self.names, values)


@cache
def _insert_sql(model: type[models.Model], vendor: str, count: int = 1) -> tuple[str, tuple]:
    """The INSERT of ``count`` rows of ``model`` (every concrete field but the automatic primary
    key), returning the new key when there is one row."""
    db = _db()
    quote = db.ops.quote_name
    fields = tuple(f for f in model._meta.concrete_fields if f is not model._meta.auto_field)
    columns = ", ".join(quote(f.column) for f in fields)
    values = ", ".join([f"({placeholders(fields)})"] * count)
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES {values}"  # noqa: S608  # nosec B608: names from the model, values are parameters
    if count == 1 and db.features.can_return_columns_from_insert:
        sql += f" RETURNING {quote(model._meta.pk.column)}"
    return sql, fields


def insert(*objs: models.Model) -> None:
    """Write these new instances of one model in one INSERT, their fields prepared as ``save()``
    prepares them (defaults, ``auto_now_add``, JSON, addresses). A single instance gets its new
    primary key; several do not (use them for rows nobody reads back at once)."""
    if not objs:
        return
    db, model = _db(), type(objs[0])
    sql, fields = _insert_sql(model, db.vendor, len(objs))
    params = [f.get_db_prep_save(f.pre_save(obj, True), db) for obj in objs for f in fields]
    with _cursor(db) as cursor:
        cursor.execute(sql, params)
        if len(objs) == 1:
            pk = cursor.fetchone()[0] if "RETURNING" in sql else cursor.lastrowid
            objs[0].pk = pk
    for obj in objs:
        obj._state.adding, obj._state.db = False, DEFAULT_DB_ALIAS


@cache
def _update_sql(
    model: type[models.Model], vendor: str, names: tuple[str, ...]
) -> tuple[str, tuple]:
    """The UPDATE of the fields ``names`` of one row of ``model``, by primary key."""
    db = _db()
    quote = db.ops.quote_name
    fields = tuple(model._meta.get_field(name) for name in names)
    columns = ", ".join(f"{quote(f.column)} = %s" for f in fields)
    pk = quote(model._meta.pk.column)
    sql = f"UPDATE {quote(model._meta.db_table)} SET {columns} WHERE {pk} = %s"  # noqa: S608  # nosec B608: names from the model, values are parameters
    return sql, fields


def update(obj: models.Model, names: Sequence[str]) -> None:
    """Write these fields of a saved instance, prepared as ``save(update_fields=...)`` would
    prepare them (for the rows a launch updates; the model has no ``save()`` of its own and no
    signal receivers)."""
    db = _db()
    sql, fields = _update_sql(type(obj), db.vendor, tuple(names))
    params = [f.get_db_prep_save(f.pre_save(obj, False), db) for f in fields]
    with _cursor(db) as cursor:
        cursor.execute(sql, [*params, obj.pk])
