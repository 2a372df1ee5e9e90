"""Studies on PostgreSQL: one storage per process, the schema made once, and the study lock
and trial leases kept in the database, so that workers on machines that share nothing but
the database (each with its own --checkpoint-dir) share one study.

- One storage, one connection pool per process and URL (`storage`): Optuna would open a new
  pool for each study object; a worker holds at most POOL_SIZE + POOL_OVERFLOW connections
  (its own calls, the lease's heartbeat, the study lock). pool_pre_ping replaces connections
  a server restart cut; the pool is dropped (not closed) in a forked child (DataLoader
  workers), which must never talk on its parent's sockets.
- The schema (Optuna's tables and ours) is created under a database-wide advisory lock:
  first workers started together would otherwise race in CREATE TABLE and all but one fail.
- The study lock is a transaction-level advisory lock keyed by the study's name: the server
  drops it when its holder's connection ends (kill -9, a lost machine: at the latest after
  IDLE_LIMIT, as the lock's transaction idles on the server while the holder works).
- Leases are rows of runner_trial_leases: owner, its run dir, and a heartbeat in the
  server's clock (no clocks to keep in step). Claiming is a compare-and-set on the former
  owner's token, so two workers never both take one trial, lock or no lock.
"""
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time

from utils.core.liveness import pid_namespace
from utils.sweep.lease import Lease, owner_is_gone
from utils.sweep.patience import Outage, Patient, is_lost_connection, reason_of, retried

log = logging.getLogger(__name__)
POOL_SIZE, POOL_OVERFLOW = 2, 2
CONNECT_TIMEOUT = 10  # seconds for a connection to be made: a server out of reach is one line, not a hang
IDLE_LIMIT = "120s"  # the server ends a study lock's session whose holder stays silent this long
LEASES = "runner_trial_leases"
_storages = {}  # url -> Patient storage: one pool per process
_guard = threading.Lock()


def is_postgres(url):
    """Whether `url` names a PostgreSQL database (the study's lock and leases live there)."""
    from sqlalchemy.engine import make_url

    return bool(url) and make_url(url).get_backend_name() == "postgresql"


def shown(url):
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _key(*parts):
    """A signed 64-bit advisory lock key for `parts` (the same on every machine)."""
    digest = hashlib.sha256("\0".join(("runner", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def storage(url, patience):
    """This process's storage of the database `url`: Optuna's RDBStorage (cached), its
    operations retried across a lost connection for `patience` seconds (patience.py)."""
    with _guard:
        if url not in _storages:
            _storages[url] = _open(url, patience)
        found = _storages[url]
        found.outage.patience = patience
        return found


def _open(url, patience):
    from optuna.storages import RDBStorage
    from optuna.storages._cached_storage import _CachedStorage

    outage = Outage(shown(url), patience)
    engine_kwargs = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW, "pool_pre_ping": True,
                     "connect_args": {"connect_timeout": CONNECT_TIMEOUT, "application_name": "runner sweep"}}

    def made():
        with schema_lock(url):
            rdb = RDBStorage(url, engine_kwargs=engine_kwargs)
            with rdb.engine.begin() as connection:
                _create_leases(connection)
        return rdb

    rdb = retried(made, outage)
    engine = rdb.engine
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    found = Patient(_CachedStorage(rdb), outage)
    found.engine = engine
    return found


@contextlib.contextmanager
def schema_lock(url):
    """The database-wide lock under which the schema is created (a connection of its own)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _key("schema")})
            connection.commit()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # the connection's end releases it anyway
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _key("schema")})
    finally:
        engine.dispose()


def _create_leases(connection):
    from sqlalchemy import text

    connection.execute(text(f"""
        CREATE TABLE IF NOT EXISTS {LEASES} (
            trial_id integer PRIMARY KEY,
            token varchar(64) NOT NULL,
            host varchar(255) NOT NULL,
            pid integer NOT NULL,
            pid_namespace varchar(255) NOT NULL,
            run_dir text NOT NULL,
            took_over text,
            since timestamptz NOT NULL DEFAULT now(),
            heartbeat timestamptz NOT NULL DEFAULT now()
        )"""))


@contextlib.contextmanager
def study_lock(found, study_name):
    """The study's lock (see the module), waited for as long as it is held; a connection
    that fails while taking it is tried again for the storage's patience."""
    from sqlalchemy import text

    key = _key("study", study_name)

    def take():
        connection = found.engine.connect()
        try:
            connection.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = '{IDLE_LIMIT}'"))
            pause = 0.005
            while not connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}).scalar():
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
        except BaseException:
            connection.close()
            raise
        return connection

    connection = retried(take, found.outage)
    try:
        yield
    finally:
        try:
            connection.commit()  # ends the transaction, and the lock with it
        except Exception as error:  # noqa: BLE001 - the server cut the lock's connection: it is released
            if not is_lost_connection(error):
                raise
            log.warning("the study lock's connection to %s was cut (%s) while it was held", found.outage.shown,
                        reason_of(error))
        finally:
            connection.close()


def holders(found, trial_ids):
    """{trial_id: lease record with its age in seconds (the server's clock)} of `trial_ids`."""
    from sqlalchemy import bindparam, text

    if not trial_ids:
        return {}
    query = text(f"SELECT trial_id, token, host, pid, pid_namespace, run_dir, "
                 f"EXTRACT(EPOCH FROM now() - heartbeat) AS age FROM {LEASES} WHERE trial_id IN :ids"
                 ).bindparams(bindparam("ids", expanding=True))

    def read():
        with found.engine.connect() as connection:
            return {row.trial_id: {**row._asdict(), "age": float(row.age)}
                    for row in connection.execute(query, {"ids": list(trial_ids)})}
    return retried(read, found.outage)


def is_stale(record, stale_after):
    """Whether a trial whose lease is `record` (holders()'s, or None) has no live owner."""
    return record is None or record["age"] > stale_after or owner_is_gone(record)


class DatabaseLease(Lease):
    """This worker's lease on one trial, as a row of runner_trial_leases: utils/sweep/lease.py's
    Lease (its renewal thread), plus `outage` once the database has been gone too long."""
    transient = Exception  # the heartbeat thread sorts them out (renew_failed)

    def __init__(self, found, trial_id, run_dir, stale_after, former=None):
        super().__init__(run_dir, stale_after)
        self.found, self.trial_id, self.run_dir = found, trial_id, run_dir
        self.former = former  # the record of the worker it was taken from, if any
        self.outage = None  # the message, once the database has not answered for its patience
        self.renewed = time.monotonic()

    def _execute(self, sql, **values):
        from sqlalchemy import text

        with self.found.engine.begin() as connection:
            return connection.execute(text(sql), values).rowcount

    def claim(self):
        """Take the trial (the caller holds the study lock): True unless another worker took
        it first (the former owner's token no longer holds it)."""
        row = {"trial_id": self.trial_id, "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
               "pid_namespace": pid_namespace(), "run_dir": str(self.run_dir),
               "took_over": self.former and f"{self.former['host']} pid {self.former['pid']}"}
        if self.former is None:
            sql = (f"INSERT INTO {LEASES} (trial_id, token, host, pid, pid_namespace, run_dir, took_over) VALUES "
                   f"(:trial_id, :token, :host, :pid, :pid_namespace, :run_dir, :took_over) "
                   f"ON CONFLICT (trial_id) DO NOTHING")
            done = retried(lambda: self._execute(sql, **row), self.found.outage)
        else:
            sql = (f"UPDATE {LEASES} SET token = :token, host = :host, pid = :pid, pid_namespace = :pid_namespace, "
                   f"run_dir = :run_dir, took_over = :took_over, since = now(), heartbeat = now() "
                   f"WHERE trial_id = :trial_id AND token = :former")
            done = retried(lambda: self._execute(sql, former=self.former["token"], **row), self.found.outage)
        return done == 1

    def renew_failed(self, error):
        if not is_lost_connection(error):
            log.warning("could not renew the lease of trial %s: %s", self.trial_id, reason_of(error))
            return
        self.found.outage.failed(error)
        if self.found.outage.exceeded() and self.outage is None:
            self.outage = self.found.outage.message()

    def renew(self):
        """Renew the heartbeat if the lease is still ours; else note who holds it now."""
        if self._execute(f"UPDATE {LEASES} SET heartbeat = now() WHERE trial_id = :trial_id AND token = :token",
                         trial_id=self.trial_id, token=self.token) == 1:
            self.renewed = time.monotonic()
            self.found.outage.answered()
            return True
        holder = holders(self.found, [self.trial_id]).get(self.trial_id)
        self.lost = holder or {"host": "?", "pid": "?"}
        return False

    def check(self):
        """Raise LeaseLost when another worker holds this trial now (before every write);
        the heartbeat thread's news is used when it renewed within its interval."""
        if self.lost is None and time.monotonic() - self.renewed > max(self.stale_after / 5, 0.05):
            with contextlib.suppress(Exception):
                self.renew()
        if self.lost is not None:
            raise self.lost_error()

    def release(self):
        """Stop renewing and delete the lease if it is still ours (not when the database is
        gone: the lease then goes stale, and the trial is resumed after --stale-after, or at
        once by a worker on this machine)."""
        self.stop()
        with contextlib.suppress(Exception):
            self._execute(f"DELETE FROM {LEASES} WHERE trial_id = :trial_id AND token = :token",
                          trial_id=self.trial_id, token=self.token)
