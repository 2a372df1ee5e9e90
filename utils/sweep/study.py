"""Where a study lives: its folder under --checkpoint-dir (the trials' run dirs, sweep.yaml,
the lock) and its Optuna storage (the journal file there, utils/sweep/journal.py, or an RDB
by URL), with the checks that turn a wrong folder, record or URL into one line."""
from pathlib import Path

from optuna.storages.journal import JournalStorage

from configs.yaml_files import load_yaml
from utils.core.errors import UsageError, UserError, excerpt, shorten
from utils.core.io import sqlite_problem
from utils.engine import runtime
from utils.sweep.journal import Journal, held
from utils.sweep.lock import OwnedLock

JOURNAL, RECORD, LOCK = "optuna.journal", runtime.STUDY_RECORD, "sweep"
SHARED = "runner:sweep"  # a PostgreSQL study's system attribute: what every worker must bring (joining.check_shared)
# What sweep.yaml must hold, and the type of each entry.
RECORD_KEYS = {"study": str, "storage": str, "search_space": dict, "options": dict}
# Python packages SQLAlchemy's drivers come in (module name -> what to pip install).
PATIENCE = 10.0  # seconds a command that only reads a study waits for its database to answer again
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                   "pymysql": "PyMySQL"}


def recorded_url(url):
    """`url` as sweep.yaml keeps it: with its password masked (a study folder is copied, shared
    and archived; give the password through ~/.pgpass or PGPASSWORD, or --storage again)."""
    if not url or url == JOURNAL:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def usable_url(recorded):
    """The URL to open a study whose sweep.yaml keeps `recorded`: without the masked password,
    so that the driver reads it from ~/.pgpass or PGPASSWORD."""
    from sqlalchemy.engine import make_url

    parsed = make_url(recorded)
    return parsed._replace(password=None).render_as_string(hide_password=False) if parsed.password == "***" else recorded


def trial_dir(study_dir, number):
    return Path(study_dir) / f"trial-{number}"


def storage_of(study_dir, url="", patience=PATIENCE):
    """The Optuna storage of a study: `url` (an RDB; PostgreSQL's shared by the process and
    patient with a lost connection for `patience` seconds: utils/sweep/postgres.py), or the
    journal file in its folder (reading it creates nothing; a damaged one is one line)."""
    if url:
        from utils.sweep import postgres

        return postgres.storage(url, patience) if postgres.is_postgres(url) else url
    return JournalStorage(Journal(Path(study_dir) / JOURNAL))


def study_lock(study_dir):
    """The study's lock: held for the milliseconds it takes to pick, ask and lease a trial."""
    return held(OwnedLock(str(Path(study_dir) / LOCK)), Path(study_dir) / LOCK)  # a killed holder: taken over at once


def state_counts(trials):
    """{"complete", "pruned", "running", "waiting", "fail": how many of `trials`}."""
    counts = {"complete": 0, "pruned": 0, "running": 0, "waiting": 0, "fail": 0}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts


def check_study_dir(study_dir):
    """UsageError when `study_dir` holds a train run instead of a study (--study names the
    folder of a run): a sweep would mix its trials into it."""
    study_dir = Path(study_dir)
    if study_dir.is_file():
        raise UsageError(f"--study={study_dir.name}: {study_dir} is a file, not a study's folder; give another --study")
    holds_run = any((study_dir / name).exists() for name in ("config.yaml", "last.pth", "best.pth", "emergency.pth"))
    if holds_run and not (study_dir / RECORD).exists():
        raise UsageError(f"--study={study_dir.name}: {study_dir} holds a train run, not a sweep's study; give another "
                         f"--study")


def read_record(study_dir):
    """The study's sweep.yaml as a checked dict, or None when it has none yet."""
    path = Path(study_dir) / RECORD
    if not path.exists():
        return None
    fix = "restore it, or delete it (the next worker writes it again from its own options)"
    if path.is_dir():
        raise UserError(f"{path} is a folder, not the study's record; move it away")
    try:
        record = load_yaml(path)
    except UsageError as error:
        raise UserError(f"{path} is not a valid sweep record ({error}); {fix}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a valid sweep record (not a mapping); {fix}")
    for key, kind in RECORD_KEYS.items():
        if not isinstance(record.get(key), kind):
            raise UserError(f"{path} is not a valid sweep record ({key}: {excerpt(record.get(key))}); {fix}")
    return record


def check_storage(url, create=True):
    """UsageError or UserError unless `url` names a database Optuna can keep a study in, its
    driver is installed and it answers (SQLite: its folder is writable, or with `create`
    false, the file exists): checked before anything is written."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"--storage={excerpt(url)} is not a database URL; give e.g. sqlite:///study.db or "
                         f"postgresql://user@host/db, or leave --storage out for the journal file") from None
    shown = f"--storage={parsed.render_as_string(hide_password=True)}"  # never print a password
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise UsageError(f"{shown}: unknown database {parsed.drivername!r}; Optuna keeps studies in sqlite, "
                         f"postgresql, mysql and the other SQLAlchemy databases") from None
    try:
        dialect.import_dbapi()
    except ImportError as error:
        package = DRIVER_PACKAGES.get(error.name, error.name)
        raise UserError(f"{shown} needs the Python package {package} (the driver of {parsed.drivername}), which is "
                        f"not installed: {runtime.program('python')} -m pip install '{package}'") from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(shown, parsed.database, create)
        return
    timeout = {"postgresql": {"connect_timeout": 10}, "mysql": {"connect_timeout": 10}}
    engine = create_engine(parsed, connect_args=timeout.get(parsed.get_backend_name(), {}))
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise UserError(f"{shown}: cannot reach the database ({shorten(reason, 200)}); start it, or check the host, "
                        f"port, name and credentials") from None
    finally:
        engine.dispose()


def _check_sqlite(shown, database, create):
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise UsageError(f"{shown}: an in-memory database ends with its worker, and other workers cannot see it; "
                         f"give a file (sqlite:///study.db)")
    path = Path(database)
    problem = sqlite_problem(path)
    if problem:
        raise UserError(f"{shown}: {problem}")
    if not path.is_file() and not create:
        raise UserError(f"{shown}: {path} does not exist: no study was kept there")
    if not path.is_file():
        runtime.check_output_dir(path.parent, "--storage")
