"""The PostgreSQL graph store: one database that many workers write at once.

URL: ``postgresql://user@host:port/database`` (user, host and port may be
left to libpq's defaults: ``PGUSER``, ``PGHOST``, ``PGPORT``). Credentials
come from the environment (``PGPASSWORD``) or the password file
(``~/.pgpass``, or ``PGPASSFILE``), never from the URL: a URL with a
password is refused, and no message prints one. Other libpq settings may
follow as query parameters (``?sslmode=require``); ``luts=/path`` names the
folder of the lookup tables (a pipeline puts it at ``<output>/luts``).

Every block's rows, its result and its done mark are written in one
transaction, by the worker that ran the block (``workers_write``), so a
killed worker leaves its block whole or absent. Rows travel with ``COPY ...
(FORMAT BINARY)``, packed and unpacked by numpy without a Python object per
row. A transaction-scoped advisory lock per (stage, block) serialises two
writers of the same block (a block resent after its worker was lost), so a
rerun replaces exactly the block's own rows.

The tables live in the schema ``blockseg`` of the database. A database
remembers the LUT folder of the run that first wrote it and refuses to
serve another one: two runs (two configs, two outputs) never share one
ledger; give each its own database (``createdb``).

Fragment ids are uint64 in blockseg and PostgreSQL has no unsigned integer:
ids stay below 2**63 (the config checks this), so BIGINT holds them exactly.

LUTs are ``.npy`` files in the LUT folder, as for the other stores: relabel
blocks memory-map their rows, which no query would beat.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import networkx as nx
import numpy as np

from blockseg.geometry import Roi
from blockseg.graph.base import (
    BlockOutput,
    Edges,
    LutFolder,
    Nodes,
    StageState,
    StoreError,
    chunked_edges,
    graph_from,
    meta_text,
    stale_commit,
)

SCHEMA = "blockseg"
#: Bumped when the tables change: a database of another layout is refused.
LAYOUT = "1"

TABLES = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.identity (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.stages (
    stage TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {SCHEMA}.done (
    stage TEXT NOT NULL, block BIGINT NOT NULL, nodes BIGINT NOT NULL, edges BIGINT NOT NULL,
    PRIMARY KEY (stage, block));
CREATE TABLE IF NOT EXISTS {SCHEMA}.results (
    stage TEXT NOT NULL, block BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (stage, block));
CREATE TABLE IF NOT EXISTS {SCHEMA}.nodes (
    id BIGINT NOT NULL, z DOUBLE PRECISION NOT NULL, y DOUBLE PRECISION NOT NULL,
    x DOUBLE PRECISION NOT NULL, size BIGINT NOT NULL, stage TEXT NOT NULL, block BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_block ON {SCHEMA}.nodes (stage, block);
CREATE INDEX IF NOT EXISTS nodes_id ON {SCHEMA}.nodes (id);
CREATE INDEX IF NOT EXISTS nodes_position ON {SCHEMA}.nodes (z, y, x);
CREATE TABLE IF NOT EXISTS {SCHEMA}.edges (
    u BIGINT NOT NULL, v BIGINT NOT NULL, score REAL NOT NULL, stage TEXT NOT NULL, block BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS edges_block ON {SCHEMA}.edges (stage, block);
"""
# No index on the edges' endpoints: random inserts into two B-trees cut the
# write rate by 3 (measured: 85,000 against 265,000 edges/s from one writer),
# and what reads edges at scale reads them by block. An edge query by ROI
# therefore scans the edges (hashed against the ROI's nodes, which are indexed).

_FIXED = {"nodes": ["id", "z", "y", "x", "size", "stage", "block"], "edges": ["u", "v", "score", "stage", "block"]}
# any constant: the lock that serialises creating the tables
_SCHEMA_LOCK = 0x626C6B73
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_CONNECT_TIMEOUT = 10


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "graph store postgresql://: psycopg is not installed (pip install 'blockseg[postgres]')"
        ) from None
    return psycopg


def parse_url(url: str, base: Path | None = None) -> tuple[dict, Path, str]:
    """libpq connection settings, the LUT folder and the URL as stored (absolute LUT folder).

    Raises
    ------
    StoreError
        For a password in the URL (the message shows the URL without it),
        a missing database name or a port that is not a number.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        shown = url.replace(parts.password, "***") if parts.password else url
        raise StoreError(
            f"graph store URL {shown}: a password in the URL is refused; "
            f"set PGPASSWORD or put it in ~/.pgpass (PGPASSFILE)"
        )
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise StoreError(f"graph store URL {url!r}: expected postgresql://user@host:port/database")
    settings: dict = {"dbname": database}
    if parts.username:
        settings["user"] = unquote(parts.username)
    if parts.hostname:
        settings["host"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise StoreError(f"graph store URL {url!r}: the port is not a number") from None
    if port is not None:
        settings["port"] = port
    luts = None
    extra = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "luts":
            luts = value
        elif key in ("password", "passfile"):
            raise StoreError(
                f"graph store URL {urlsplit(url)._replace(query='').geturl()}: {key} in the URL is refused; "
                f"set PGPASSWORD or put the password in ~/.pgpass (PGPASSFILE)"
            )
        else:
            settings[key] = value
            extra.append((key, value))
    if luts is None:
        lut_dir = (base or Path.cwd()) / f"{database}.luts"
    else:
        lut_dir = Path(luts)
        if not lut_dir.is_absolute():
            lut_dir = (base or Path.cwd()) / lut_dir
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in extra + [("luts", str(lut_dir))])
    netloc = parts.netloc
    stored = f"postgresql://{netloc}/{quote(database)}?{query}"
    return settings, lut_dir, stored


def _where(settings: dict) -> str:
    user = settings.get("user", os.environ.get("PGUSER", ""))
    host = settings.get("host", os.environ.get("PGHOST", "localhost"))
    port = settings.get("port", os.environ.get("PGPORT", 5432))
    return f"{user + '@' if user else ''}{host}:{port}/{settings['dbname']}"


def _connection_problem(error: Exception, settings: dict) -> str:
    """One line for a failed connection; libpq's message without its boilerplate (never a password)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines)
    password = os.environ.get("PGPASSWORD")
    if password:
        text = text.replace(password, "***")
    where = _where(settings)
    if "password authentication failed" in text or "no password supplied" in text:
        user = settings.get("user", os.environ.get("PGUSER", "(default user)"))
        return (
            f"graph store postgresql://{where}: the server refused the credentials of user {user!r} "
            f"(the password comes from PGPASSWORD or ~/.pgpass)"
        )
    if "does not exist" in text and "database" in text:
        return (
            f"graph store postgresql://{where}: database {settings['dbname']!r} does not exist "
            f"(create it: createdb {settings['dbname']})"
        )
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text \
            or "could not translate host name" in text or "No route to host" in text:
        reason = "connection refused" if "Connection refused" in text else (
            "timed out" if "timeout expired" in text else
            "unknown host" if "could not translate host name" in text else "unreachable"
        )
        return f"graph store postgresql://{where}: cannot reach the server ({reason}); is PostgreSQL running there?"
    last = text.split("FATAL:")[-1].strip() if "FATAL:" in text else text
    return f"graph store postgresql://{where}: cannot connect ({last})"


def _copy_payload(columns: list[np.ndarray]) -> bytes:
    """Rows of fixed-width columns in PostgreSQL's binary COPY format, built in numpy."""
    n = len(columns[0])
    fields = [("count", ">i2")]
    for i, column in enumerate(columns):
        kind = column.dtype.newbyteorder(">") if column.dtype.kind in "iuf" else column.dtype
        fields += [(f"length{i}", ">i4"), (f"field{i}", kind)]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["count"] = len(columns)
    for i, column in enumerate(columns):
        rows[f"length{i}"] = column.dtype.itemsize
        rows[f"field{i}"] = column
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _copy_columns(data: bytes, kinds: list[str]) -> list[np.ndarray]:
    """Columns of a binary COPY of fixed-width, non-null values (``kinds``: '>i8', '>f8', '>f4')."""
    if len(data) < 21:
        return [np.zeros(0, np.dtype(k).newbyteorder("=")) for k in kinds]
    extension = struct.unpack(">i", data[15:19])[0]
    body = memoryview(data)[19 + extension : len(data) - 2]
    fields = [("count", ">i2")]
    for i, kind in enumerate(kinds):
        fields += [(f"length{i}", ">i4"), (f"field{i}", kind)]
    rows = np.frombuffer(body, dtype=np.dtype(fields))
    return [rows[f"field{i}"].astype(np.dtype(kind).newbyteorder("=")) for i, kind in enumerate(kinds)]


# per process: the stores reopened from pickles, so the tasks a worker runs share one connection per thread
_REOPENED: dict[tuple[int, str], "PostgresGraphStore"] = {}
_REOPENED_LOCK = threading.Lock()


def _reopen(url: str) -> "PostgresGraphStore":
    key = (os.getpid(), url)
    with _REOPENED_LOCK:
        store = _REOPENED.get(key)
        if store is None:
            store = _REOPENED[key] = PostgresGraphStore(url, _create=False)
        return store


class PostgresGraphStore(LutFolder):
    """Graph store in a PostgreSQL database; LUTs in a folder.

    Parameters
    ----------
    url : str
        ``postgresql://user@host:port/database[?luts=/folder&...]``.
    base : Path, optional
        Where a relative LUT folder is taken from.

    Raises
    ------
    StoreError
        One line, before any block runs: a password in the URL, a server
        that cannot be reached, credentials it refuses, a database written
        for another run (another LUT folder) or by another layout.
    """

    #: Workers commit their own blocks, each in one transaction.
    workers_write = True

    def __init__(self, url: str, base: Path | None = None, *, _create: bool = True) -> None:
        self._settings, self.lut_dir, self.url = parse_url(url, base)
        self._local = threading.local()
        self._columns: dict[str, list[str]] | None = None
        self._pid = os.getpid()
        self.where = f"postgresql://{_where(self._settings)}"
        if _create:
            # the driver: fail now, in one line, rather than in every block
            self._open_tables()

    def __repr__(self) -> str:
        return f"PostgresGraphStore({self.url!r})"

    def __reduce__(self):
        # a worker reopens the store from its URL, once per process, and connects on first use
        return (_reopen, (self.url,))

    # -- connection --------------------------------------------------------
    @property
    def _db(self):
        connection = getattr(self._local, "connection", None)
        # a connection the server dropped (restart, idle timeout) is replaced on next use
        if connection is None or connection.closed or connection.broken or self._pid != os.getpid():
            connection = self._connect()
            self._local.connection = connection
            self._pid = os.getpid()
        return connection

    def _connect(self):
        psycopg = _psycopg()
        try:
            connection = psycopg.connect(
                autocommit=True, connect_timeout=_CONNECT_TIMEOUT, application_name="blockseg", **self._settings
            )
        except psycopg.Error as error:
            raise StoreError(_connection_problem(error, self._settings)) from None
        connection.execute(f"SET search_path TO {SCHEMA}")
        return connection

    def _open_tables(self) -> None:
        psycopg = _psycopg()
        db = self._db
        try:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                # only a new database gets its tables: CREATE INDEX IF NOT EXISTS would
                # still wait for every worker's open transaction on the table
                if db.execute(f"SELECT to_regclass('{SCHEMA}.identity')").fetchone()[0] is None:
                    db.execute(TABLES)
                identity = dict(db.execute("SELECT key, value FROM identity").fetchall())
                if not identity:
                    db.execute("INSERT INTO identity VALUES ('layout', %s), ('luts', %s)", (LAYOUT, str(self.lut_dir)))
                    identity = {"layout": LAYOUT, "luts": str(self.lut_dir)}
        except psycopg.errors.InsufficientPrivilege as error:
            raise StoreError(f"graph store {self.where}: cannot create its tables ({error.diag.message_primary})") from None
        if identity.get("layout") != LAYOUT:
            raise StoreError(
                f"graph store {self.where}: the database holds tables of another blockseg version "
                f"(layout {identity.get('layout')}, this one writes {LAYOUT}); use another database"
            )
        if identity.get("luts") != str(self.lut_dir):
            raise StoreError(
                f"graph store {self.where}: the database belongs to another run (its LUTs are in "
                f"{identity.get('luts')}, this config's in {self.lut_dir}); give each run its own database "
                f"(createdb NAME)"
            )

    def _attribute_columns(self, table: str) -> list[str]:
        if self._columns is None:
            self._refresh_columns()
        assert self._columns is not None
        return self._columns[table][len(_FIXED[table]):]

    def _refresh_columns(self) -> None:
        rows = self._db.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name IN ('nodes', 'edges') ORDER BY ordinal_position",
            (SCHEMA,),
        ).fetchall()
        self._columns = {"nodes": [], "edges": []}
        self._types: dict[tuple[str, str], str] = {}
        for table, column, kind in rows:
            self._columns[table].append(column)
            self._types[(table, column)] = kind

    def _declare(self, table: str, attrs: dict[str, np.ndarray]) -> None:
        """Add a column for each attribute not seen before, in its own transaction.

        Outside the block's transaction: a schema change waits for every
        open transaction on the table, which other workers' commits are.
        """
        if not attrs:
            return
        if self._columns is None or any(name not in self._columns[table] for name in attrs):
            self._refresh_columns()
        assert self._columns is not None
        for name, values in attrs.items():
            if name not in self._columns[table]:
                kind = "BIGINT" if np.issubdtype(values.dtype, np.integer) else "DOUBLE PRECISION"
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {kind}")
                self._refresh_columns()

    def _attribute_array(self, table: str, name: str, values: np.ndarray) -> np.ndarray:
        kind = self._types.get((table, name), "double precision")
        return np.asarray(values).astype(np.int64 if kind == "bigint" else np.float64)

    # -- writing -----------------------------------------------------------
    def commit_block(self, stage: str, block_id: int, output: BlockOutput, token: str | None = None) -> None:
        """The block's rows, result and done mark in one transaction; earlier rows of the block replaced."""
        output.check()
        block_id = int(block_id)
        if output.nodes is not None:
            self._declare("nodes", output.nodes.attrs)
        if output.edges is not None:
            self._declare("edges", output.edges.attrs)
        db = self._db
        counts = [0, 0]
        with db.transaction():
            if token is not None:
                # FOR SHARE: a drop_stage (which deletes this row) waits for this
                # commit, or this commit waits for it and then sees the row gone
                row = db.execute("SELECT token FROM stages WHERE stage = %s FOR SHARE", (stage,)).fetchone()
                if row is None or row[0] != token:
                    raise stale_commit(stage, block_id, token, None if row is None else row[0])
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, %s))", (stage, block_id))
            for table in ("nodes", "edges", "results"):
                db.execute(f"DELETE FROM {table} WHERE stage = %s AND block = %s", (stage, block_id))
            with db.cursor() as cursor:
                if output.nodes is not None and len(output.nodes):
                    counts[0] = len(output.nodes)
                    self._copy_nodes(cursor, stage, block_id, output.nodes)
                if output.edges is not None and len(output.edges):
                    counts[1] = len(output.edges)
                    self._copy_edges(cursor, stage, block_id, output.edges)
            if output.result is not None:
                db.execute("INSERT INTO results VALUES (%s, %s, %s)", (stage, block_id, output.result))
            db.execute(
                "INSERT INTO done VALUES (%s, %s, %s, %s) ON CONFLICT (stage, block) "
                "DO UPDATE SET nodes = EXCLUDED.nodes, edges = EXCLUDED.edges",
                (stage, block_id, *counts),
            )

    @staticmethod
    def _labels(stage: str, block_id: int, n: int) -> list[np.ndarray]:
        text = stage.encode()
        return [np.full(n, text, dtype=f"S{len(text)}"), np.full(n, block_id, np.int64)]

    def _copy_nodes(self, cursor, stage: str, block_id: int, nodes: Nodes) -> None:
        names = list(nodes.attrs)
        centers = np.asarray(nodes.centers, np.float64)
        columns = [
            nodes.ids.astype(np.uint64).astype(np.int64),
            centers[:, 0].copy(), centers[:, 1].copy(), centers[:, 2].copy(),
            nodes.sizes.astype(np.int64),
            *self._labels(stage, block_id, len(nodes)),
            *(self._attribute_array("nodes", n, nodes.attrs[n]) for n in names),
        ]
        self._copy(cursor, "nodes", _FIXED["nodes"] + names, columns)

    def _copy_edges(self, cursor, stage: str, block_id: int, edges: Edges) -> None:
        names = list(edges.attrs)
        columns = [
            edges.u.astype(np.uint64).astype(np.int64),
            edges.v.astype(np.uint64).astype(np.int64),
            edges.scores.astype(np.float32),
            *self._labels(stage, block_id, len(edges)),
            *(self._attribute_array("edges", n, edges.attrs[n]) for n in names),
        ]
        self._copy(cursor, "edges", _FIXED["edges"] + names, columns)

    @staticmethod
    def _copy(cursor, table: str, names: list[str], columns: list[np.ndarray]) -> None:
        payload = _copy_payload(columns)
        with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
            step = 1 << 24  # 16 MiB pieces: the whole block is never copied into one more buffer
            view = memoryview(payload)
            for start in range(0, len(payload), step):
                copy.write(view[start : start + step])

    def drop_stage(self, stage: str) -> None:
        db = self._db
        with db.transaction():
            # the stage's row first: deleting it waits for the worker commits that
            # hold it (FOR SHARE, see commit_block), so the deletes below see their
            # rows, and commits after it find no row and write nothing
            for table in ("stages", "done", "nodes", "edges", "results"):
                db.execute(f"DELETE FROM {table} WHERE stage = %s", (stage,))

    def set_stage_state(self, stage: str, state: StageState) -> None:
        self._db.execute(
            "INSERT INTO stages VALUES (%s, %s, %s) ON CONFLICT (stage) "
            "DO UPDATE SET fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token",
            (stage, state.fingerprint, state.token),
        )

    def write_meta(self, meta: dict) -> None:
        self._db.execute(
            "INSERT INTO meta VALUES ('pipeline', %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (meta_text(meta),),
        )

    # -- reading -----------------------------------------------------------
    def read_meta(self) -> dict | None:
        import json

        row = self._db.execute("SELECT value FROM meta WHERE key = 'pipeline'").fetchone()
        return json.loads(row[0]) if row else None

    def done_blocks(self, stage: str) -> set[int]:
        return {row[0] for row in self._db.execute("SELECT block FROM done WHERE stage = %s", (stage,))}

    def stage_state(self, stage: str) -> StageState | None:
        row = self._db.execute("SELECT fingerprint, token FROM stages WHERE stage = %s", (stage,)).fetchone()
        return StageState(*row) if row else None

    def block_results(self, stage: str) -> dict[int, bytes]:
        rows = self._db.execute("SELECT block, data FROM results WHERE stage = %s", (stage,))
        return {block: bytes(data) for block, data in rows}

    def read_block_results(self, stage: str, block_ids: Sequence[int]) -> dict[int, bytes]:
        blocks = sorted({int(b) for b in block_ids})
        if not blocks:
            return {}
        rows = self._db.execute(
            "SELECT block, data FROM results WHERE stage = %s AND block = ANY(%s)", (stage, blocks)
        )
        return {block: bytes(data) for block, data in rows}

    def _copy_out(self, query: str, kinds: list[str]) -> list[np.ndarray]:
        """Columns of ``query`` (ints and floats only, no NULLs) through one binary COPY."""
        data = bytearray()
        with self._db.cursor() as cursor:
            with cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
                for chunk in copy:
                    data += chunk
        return _copy_columns(bytes(data), kinds)

    def _read_nodes(self, where: str) -> Nodes:
        names = self._attribute_columns("nodes")
        # attributes another stage did not write read as NaN, as in the SQLite store
        attributes = "".join(f", COALESCE({n}::float8, 'NaN')" for n in names)
        columns = self._copy_out(
            f"SELECT id, z, y, x, size{attributes} FROM nodes{where} ORDER BY id",
            [">i8", ">f8", ">f8", ">f8", ">i8"] + [">f8"] * len(names),
        )
        return Nodes(
            columns[0].astype(np.uint64), np.stack(columns[1:4], axis=1), columns[4],
            dict(zip(names, columns[5:])),
        )

    def _read_edges(self, where: str, order: str = "") -> Edges:
        names = self._attribute_columns("edges")
        attributes = "".join(f", COALESCE({n}::float8, 'NaN')" for n in names)
        columns = self._copy_out(
            f"SELECT u, v, score{attributes} FROM edges{where}{order}", [">i8", ">i8", ">f4"] + [">f8"] * len(names)
        )
        return Edges(columns[0].astype(np.uint64), columns[1].astype(np.uint64), columns[2], dict(zip(names, columns[3:])))

    def read_nodes(self, roi: Roi | None = None) -> Nodes:
        return self._read_nodes(_roi_clause(roi))

    def read_edges(self, roi: Roi | None = None) -> Edges:
        if roi is None:
            return self._read_edges("", " ORDER BY u, v")
        inside = f"SELECT id FROM nodes{_roi_clause(roi)}"
        return self._read_edges(f" WHERE u IN ({inside}) OR v IN ({inside})", " ORDER BY u, v")

    def edge_block_ids(self, stage: str) -> list[int]:
        """Ids of the blocks of ``stage`` that wrote edges (sorted)."""
        rows = self._db.execute("SELECT block FROM done WHERE stage = %s AND edges > 0 ORDER BY block", (stage,))
        return [row[0] for row in rows]

    def read_block_node_ids(self, stage: str, block_ids: Sequence[int]) -> np.ndarray:
        """Ids (uint64) of the nodes that blocks ``block_ids`` of ``stage`` wrote, in no particular order."""
        blocks = sorted({int(b) for b in block_ids})
        if not blocks:
            return np.zeros(0, np.uint64)
        listed = ", ".join(str(b) for b in blocks)
        (ids,) = self._copy_out(f"SELECT id FROM nodes WHERE stage = {_literal(stage)} AND block IN ({listed})", [">i8"])
        return ids.astype(np.uint64)

    def read_block_edges(self, stage: str, block_ids: Sequence[int]) -> Edges:
        """The edges that blocks ``block_ids`` of ``stage`` wrote (in no particular order)."""
        blocks = sorted({int(b) for b in block_ids})
        if not blocks:
            return Edges.empty()
        listed = ", ".join(str(b) for b in blocks)  # integers: nothing to quote
        return self._read_edges(f" WHERE stage = {_literal(stage)} AND block IN ({listed})")

    def iter_edges(self, chunk_size: int = 1_000_000) -> Iterator[Edges]:
        """All edges, block by block (by stage and block id), in chunks of at least ``chunk_size`` edges."""
        rows = self._db.execute("SELECT stage, block, edges FROM done WHERE edges > 0 ORDER BY stage, block").fetchall()

        def groups():
            # runs of consecutive blocks of one stage, read with one query each
            stage, first, last, count = None, 0, 0, 0
            for name, block, edges in rows:
                if stage is not None and (name != stage or count >= chunk_size):
                    yield self._read_edges(f" WHERE stage = {_literal(stage)} AND block BETWEEN {first} AND {last}")
                    stage = None
                if stage is None:
                    stage, first, count = name, block, 0
                last, count = block, count + edges
            if stage is not None:
                yield self._read_edges(f" WHERE stage = {_literal(stage)} AND block BETWEEN {first} AND {last}")

        return chunked_edges(groups(), chunk_size)

    def read_graph(self, roi: Roi | None = None) -> nx.Graph:
        """A networkx graph of the nodes inside ``roi`` and their edges."""
        return graph_from(self.read_nodes(roi), self.read_edges(roi))

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._pid == os.getpid():
            connection.close()
        self._local.connection = None


def _literal(text: str) -> str:
    """A string as an SQL literal (quotes doubled; standard_conforming_strings is on since PostgreSQL 9.1)."""
    if "\x00" in text:
        raise StoreError(f"invalid stage name {text!r}")
    return "'" + text.replace("'", "''") + "'"


def _roi_clause(roi: Roi | None) -> str:
    if roi is None:
        return ""
    bounds = []
    for axis, low, high in zip("zyx", roi.offset, roi.end):
        bounds.append(f"{axis} >= {float(low)!r} AND {axis} < {float(high)!r}")
    return " WHERE " + " AND ".join(bounds)
