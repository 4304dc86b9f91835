"""The node's database: the screening worklist, the studies to analyse (jobs) and the position in the server's
change feed.

SQLite (a file; the embedded default) or PostgreSQL (a ``postgresql://`` URL; several nodes share one worklist).
The same SQL runs on both. Every state change that must not be lost or done twice happens in one transaction:

- reading the feed: the studies that became stable are queued and the feed position advances together, so a node
  killed between the two reads the same changes again and queues nothing twice;
- taking a job: a study is claimed by one node (its name and a heartbeat); a node that restarts takes back what it
  was running, and a job whose node stopped sending heartbeats is taken over by another after :data:`LEASE_S`;
- finishing: the worklist row and the job's end (with the fingerprint of the inputs analysed) are written together.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from VertebralFractureLib.errors import InputError, VertebralFractureError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_LOCK_KEY = 0x5646_5843  # "VFXC": the advisory lock that serialises creating the tables
LEASE_S = 120.0
"""A running job whose node has sent no heartbeat for this long is free to take over (the node sends one every
:data:`HEARTBEAT_S`, also while a long analysis runs)."""
HEARTBEAT_S = 15.0
MAX_ATTEMPTS = 3
"""A study whose analysis was interrupted this many times (the node killed or out of memory each time) is recorded
as failed instead of being tried forever."""
SQLITE_BUSY_TIMEOUT_S = 60.0

STATUSES = ("screened", "not assessed", "skipped", "failed")
"""Worklist status: screened (findings valid), not assessed (quality control withheld the findings), skipped (no
series fit for analysis), failed (the analysis could not run; the reason says why)."""

WORKLIST_COLUMNS = (
    "server", "study_uid", "orthanc_study", "patient", "study_date", "study_description", "status", "reason",
    "series_uid", "series_description", "skipped_series", "fractured_levels", "worst_grade", "density_level",
    "density_hu", "density_category", "recommendation", "confidence", "statement", "qc_status", "qc_reason",
    "seg_uid", "sr_uid", "pdf_uid", "output_series", "links", "backend", "node", "version", "analyses",
    "stable_at", "analysed_at", "analysis_s", "reviewed", "reviewed_by", "reviewed_at", "review_note",
)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS vf_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS vf_feed (server TEXT PRIMARY KEY, last_change BIGINT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS vf_jobs (
        server TEXT NOT NULL, orthanc_study TEXT NOT NULL, state TEXT NOT NULL, again INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0, node TEXT, heartbeat DOUBLE PRECISION, fingerprint TEXT,
        change_seq BIGINT NOT NULL DEFAULT 0, stable_at TEXT, queued_at TEXT, finished_at TEXT,
        PRIMARY KEY (server, orthanc_study))""",
    """CREATE TABLE IF NOT EXISTS vf_worklist (
        server TEXT NOT NULL, study_uid TEXT NOT NULL, orthanc_study TEXT NOT NULL, patient TEXT, study_date TEXT,
        study_description TEXT, status TEXT NOT NULL, reason TEXT, series_uid TEXT, series_description TEXT,
        skipped_series TEXT, fractured_levels TEXT, worst_grade INTEGER, density_level TEXT,
        density_hu DOUBLE PRECISION, density_category TEXT, recommendation TEXT, confidence TEXT, statement TEXT,
        qc_status TEXT, qc_reason TEXT, seg_uid TEXT, sr_uid TEXT, pdf_uid TEXT, output_series TEXT, links TEXT,
        backend TEXT, node TEXT, version TEXT, analyses INTEGER NOT NULL DEFAULT 1, stable_at TEXT,
        analysed_at TEXT, analysis_s DOUBLE PRECISION, reviewed INTEGER NOT NULL DEFAULT 0, reviewed_by TEXT,
        reviewed_at TEXT, review_note TEXT,
        PRIMARY KEY (server, study_uid))""",
    """CREATE INDEX IF NOT EXISTS vf_jobs_state ON vf_jobs (server, state, change_seq)""",
]


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def redacted(url: str) -> str:
    """A database URL as it may be shown: without its password."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def is_postgresql(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain file path."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if "://" in url:
        raise InputError(None, f"{redacted(url)}: the worklist database must be a SQLite file (sqlite:///PATH or a "
                               "path) or a postgresql:// URL")
    return Path(url)


class DatabaseUnavailable(VertebralFractureError):
    """The database cannot be reached now (worth trying again)."""


@dataclass
class Job:
    server: str
    orthanc_study: str
    attempts: int
    fingerprint: str | None
    stable_at: str | None


class Worklist:
    """One connection to the node's database (SQLite file or PostgreSQL URL)."""

    def __init__(self, url: str, password: str | None = None, create: bool = True):
        """``create=False``: a SQLite file must exist already (reading a worklist never leaves an empty one)."""
        self.url = url
        self.postgresql = is_postgresql(url)
        if self.postgresql:
            try:
                import psycopg
            except ImportError:
                raise VertebralFractureError("a PostgreSQL worklist needs the psycopg package: "
                                             "pip install 'VertebralFracture[serve]'") from None
            try:
                extra = {"password": password} if password else {}
                self.connection = psycopg.connect(url, autocommit=True, connect_timeout=10, **extra)
            except psycopg.OperationalError as error:
                raise DatabaseUnavailable(f"{redacted(url)}: cannot connect ({_first_line(error)})") from None
        else:
            import sqlite3

            path = sqlite_path(url)
            if not path.parent.is_dir():
                raise InputError(path, "its folder does not exist")
            if not create and not path.is_file():
                raise InputError(path, "no worklist there (give the node's database: --database or the "
                                       "configuration's [worklist] database)")
            try:
                self.connection = sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
                self.connection.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as error:
                raise InputError(path, f"is not a usable SQLite database ({error})") from None
        self._in_transaction = False
        self.create_schema()

    # ---- plumbing ----------------------------------------------------------------------------------------------

    def execute(self, sql: str, params: tuple | list = ()):
        if self.postgresql:
            sql = sql.replace("?", "%s")
        try:
            return self.connection.execute(sql, tuple(params))
        except Exception as error:
            if _is_disconnect(error):
                raise DatabaseUnavailable(f"{redacted(self.url)}: connection lost ({_first_line(error)})") from None
            raise

    @contextlib.contextmanager
    def transaction(self):
        """All statements inside commit together or not at all (SQLite: BEGIN IMMEDIATE, one writer at a time)."""
        if self._in_transaction:
            yield
            return
        self._in_transaction = True
        try:
            if self.postgresql:
                with self.connection.transaction():
                    yield
            else:
                self.connection.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self.connection.execute("ROLLBACK")
                    raise
                self.connection.execute("COMMIT")
        finally:
            self._in_transaction = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()

    def create_schema(self) -> None:
        with self.transaction():
            if self.postgresql:
                # Nodes starting together would race in CREATE TABLE IF NOT EXISTS (PostgreSQL checks the catalogue
                # before it locks it): one at a time.
                self.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            for statement in SCHEMA:
                self.execute(statement)
            row = self.execute("SELECT value FROM vf_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self.execute("INSERT INTO vf_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise VertebralFractureError(f"{redacted(self.url)}: worklist schema {row[0]} is newer than this "
                                             f"program's ({SCHEMA_VERSION}): update the program")

    # ---- change feed -------------------------------------------------------------------------------------------

    def feed_position(self, server: str) -> int | None:
        row = self.execute("SELECT last_change FROM vf_feed WHERE server = ?", (server,)).fetchone()
        return None if row is None else int(row[0])

    def set_feed_position(self, server: str, position: int, expected: int | None) -> bool:
        """Move the feed position from ``expected`` to ``position``; False when another node moved it meanwhile."""
        if expected is None:
            cursor = self.execute("INSERT INTO vf_feed (server, last_change, updated_at) VALUES (?, ?, ?) "
                                  "ON CONFLICT (server) DO NOTHING", (server, position, now_text()))
        else:
            cursor = self.execute("UPDATE vf_feed SET last_change = ?, updated_at = ? WHERE server = ? AND "
                                  "last_change = ?", (position, now_text(), server, expected))
        return cursor.rowcount == 1

    def queue_study(self, server: str, orthanc_study: str, change_seq: int, stable_at: str) -> None:
        """Queue a study that became stable. A study being analysed now is queued again once that run ends."""
        self.execute(
            "INSERT INTO vf_jobs (server, orthanc_study, state, again, attempts, change_seq, stable_at, queued_at) "
            "VALUES (?, ?, 'pending', 0, 0, ?, ?, ?) ON CONFLICT (server, orthanc_study) DO UPDATE SET "
            "again = CASE WHEN vf_jobs.state = 'running' THEN 1 ELSE vf_jobs.again END, "
            "attempts = CASE WHEN vf_jobs.state = 'running' THEN vf_jobs.attempts ELSE 0 END, "
            "state = CASE WHEN vf_jobs.state = 'running' THEN 'running' ELSE 'pending' END, "
            "change_seq = excluded.change_seq, stable_at = excluded.stable_at, queued_at = excluded.queued_at",
            (server, orthanc_study, change_seq, stable_at, now_text()))

    # ---- jobs --------------------------------------------------------------------------------------------------

    def claim_job(self, server: str, node: str, lease_s: float = LEASE_S) -> Job | None:
        """Take the oldest pending study, a study this node was running when it stopped, or one whose node went
        silent for ``lease_s``."""
        now = time.time()
        lock = " FOR UPDATE SKIP LOCKED" if self.postgresql else ""
        with self.transaction():
            row = self.execute(
                "SELECT orthanc_study, attempts, fingerprint, stable_at FROM vf_jobs WHERE server = ? AND "
                "(state = 'pending' OR (state = 'running' AND (node = ? OR heartbeat < ?))) "
                "ORDER BY change_seq LIMIT 1" + lock, (server, node, now - lease_s)).fetchone()
            if row is None:
                return None
            self.execute("UPDATE vf_jobs SET state = 'running', node = ?, heartbeat = ?, attempts = attempts + 1 "
                         "WHERE server = ? AND orthanc_study = ?", (node, now, server, row[0]))
        return Job(server, row[0], int(row[1]) + 1, row[2], row[3])

    def heartbeat(self, job: Job, node: str) -> bool:
        cursor = self.execute("UPDATE vf_jobs SET heartbeat = ? WHERE server = ? AND orthanc_study = ? AND "
                              "node = ? AND state = 'running'", (time.time(), job.server, job.orthanc_study, node))
        return cursor.rowcount == 1

    def release_job(self, job: Job, node: str) -> None:
        """Give a job back untouched (the server went away mid-run): pending again, the attempt not counted."""
        self.execute("UPDATE vf_jobs SET state = 'pending', again = 0, "
                     "node = NULL, heartbeat = NULL, attempts = attempts - 1 WHERE server = ? AND orthanc_study = ? "
                     "AND node = ? AND state = 'running'", (job.server, job.orthanc_study, node))

    def finish_job(self, job: Job, node: str, fingerprint: str | None, row: dict | None) -> bool:
        """End a job and write its worklist row in one transaction; False (and nothing written) when the job is no
        longer this node's (another node took it over after a silence longer than the lease)."""
        try:
            with self.transaction():
                self._finish(job, node, fingerprint, row)
        except _NotOurs:
            return False
        return True

    def _finish(self, job: Job, node: str, fingerprint: str | None, row: dict | None) -> None:
        cursor = self.execute(
            "UPDATE vf_jobs SET state = CASE WHEN again = 1 THEN 'pending' ELSE 'done' END, again = 0, "
            "node = NULL, heartbeat = NULL, attempts = 0, fingerprint = COALESCE(?, fingerprint), "
            "finished_at = ? WHERE server = ? AND orthanc_study = ? AND node = ? AND state = 'running'",
            (fingerprint, now_text(), job.server, job.orthanc_study, node))
        if cursor.rowcount != 1:
            raise _NotOurs()
        if row is not None:
            self.upsert_row(row)

    def job_state(self, server: str, orthanc_study: str) -> dict | None:
        cursor = self.execute("SELECT state, again, attempts, node, fingerprint, change_seq FROM vf_jobs WHERE "
                              "server = ? AND orthanc_study = ?", (server, orthanc_study))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip(("state", "again", "attempts", "node", "fingerprint", "change_seq"), row))

    def jobs_waiting(self, server: str) -> int:
        return int(self.execute("SELECT COUNT(*) FROM vf_jobs WHERE server = ? AND state != 'done'",
                                (server,)).fetchone()[0])

    # ---- worklist rows -----------------------------------------------------------------------------------------

    def upsert_row(self, row: dict) -> None:
        """Insert or replace the study's row. A study analysed again keeps one row: its count of analyses goes up
        and an earlier review is cleared (it was a review of the replaced outputs)."""
        values = {column: row.get(column) for column in WORKLIST_COLUMNS}
        for column in ("skipped_series", "output_series", "links"):
            if values[column] is not None and not isinstance(values[column], str):
                values[column] = json.dumps(values[column])
        values["reviewed"] = 0
        values["analyses"] = 1
        columns = list(WORKLIST_COLUMNS)
        keep = ("server", "study_uid", "analyses")
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keep)
        self.execute(
            f"INSERT INTO vf_worklist ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT (server, study_uid) DO UPDATE SET {updates}, analyses = vf_worklist.analyses + 1",
            [values[c] for c in columns])

    def rows(self, status: list[str] | None = None, recommendation: list[str] | None = None,
             fractured: bool | None = None, reviewed: bool | None = None, since: str | None = None,
             study_uid: str | None = None, patient: str | None = None) -> list[dict]:
        """Worklist rows matching every filter given, newest study first."""
        where, params = [], []
        if status:
            where.append(f"status IN ({', '.join('?' for _ in status)})")
            params.extend(status)
        if recommendation:
            where.append(f"recommendation IN ({', '.join('?' for _ in recommendation)})")
            params.extend(recommendation)
        if fractured is not None:
            where.append("COALESCE(worst_grade, 0) >= 1" if fractured else "COALESCE(worst_grade, 0) = 0")
        if reviewed is not None:
            where.append("reviewed = ?")
            params.append(1 if reviewed else 0)
        if since:
            where.append("study_date >= ?")
            params.append(since.replace("-", ""))
        if study_uid:
            where.append("study_uid = ?")
            params.append(study_uid)
        if patient:
            where.append("patient = ?")
            params.append(patient)
        sql = f"SELECT {', '.join(WORKLIST_COLUMNS)} FROM vf_worklist"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY study_date DESC, analysed_at DESC"
        return [dict(zip(WORKLIST_COLUMNS, values)) for values in self.execute(sql, params).fetchall()]

    def mark_reviewed(self, study_uid: str, reviewer: str, note: str | None = None) -> int:
        cursor = self.execute("UPDATE vf_worklist SET reviewed = 1, reviewed_by = ?, reviewed_at = ?, "
                              "review_note = COALESCE(?, review_note) WHERE study_uid = ?",
                              (reviewer, now_text(), note, study_uid))
        return cursor.rowcount


class _NotOurs(Exception):
    """finish_job found the job taken over by another node (the transaction is rolled back)."""


def write_csv(rows: list[dict], destination) -> None:
    """The worklist rows as CSV (one line per study; JSON columns as JSON text)."""
    writer = csv.DictWriter(destination, fieldnames=list(WORKLIST_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _is_disconnect(error: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
