"""A throw-away PostgreSQL server for the tests: its own data folder in a temporary folder,
a free port on 127.0.0.1, password authentication over TCP, stopped and removed at the end.

It uses the server programs of the machine (Debian's postgresql package keeps them out of
PATH: `pg_config --bindir`, else /usr/lib/postgresql/<version>/bin). initdb refuses to run
as root, so under root the server runs as the `postgres` user, in a folder handed to it.
`find_programs()` says why no server can be had, for the tests' skip reason.
"""
import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER, PASSWORD = "runner", "pw-3141"


def find_programs():
    """(bin folder, None) of a PostgreSQL server installation, or (None, why there is none)."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        candidates.append(found.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(n) for n in p.split("/")[-2].split(".")
                                                                                if n.isdigit()], reverse=True)
    for folder in candidates:
        if folder and all(os.access(Path(folder) / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            break
    else:
        return None, ("no PostgreSQL server programs (initdb, pg_ctl) on this machine: apt-get install postgresql, "
                      "or put them on PATH")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and no `postgres` user to run initdb as (initdb refuses root)"
    if importlib.util.find_spec("psycopg") is None:  # the driver the runner uses for postgresql:// URLs
        return None, "the PostgreSQL driver is not installed: bash scripts/setup.sh --postgres"
    return Path(folder), None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One PostgreSQL cluster: `start()`, `url(database)`, `create_database`, `stop`,
    `restart`, `remove` (stops it and deletes its folder)."""

    def __init__(self, bin_dir):
        self.bin_dir, self.port = Path(bin_dir), free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="runner-pg-"))
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self._as = None
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._as = (owner.pw_uid, owner.pw_gid)
        os.chmod(self.folder, 0o700)
        secret = self.folder / "password"
        secret.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(secret, *self._as)
        self._run("initdb", "-D", self.data, "-U", USER, "--pwfile", secret, "--auth-host=scram-sha-256",
                  "--auth-local=trust", "-E", "UTF8", "--no-sync", "--no-instructions")

    def _run(self, program, *args, check=True, timeout=120):
        demote = self._demote if self._as else None
        # output to a file, not a pipe: a server started by pg_ctl would hold the pipe open
        with tempfile.TemporaryFile("w+") as output:
            done = subprocess.run([str(self.bin_dir / program), *map(str, args)], stdout=output,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout,
                                  preexec_fn=demote, cwd=self.folder, text=True)
            output.seek(0)
            said = output.read()
        if check and done.returncode:
            raise RuntimeError(f"{program} failed ({done.returncode}): {said[-2000:]}")
        return said

    def _demote(self):
        """In the child, before exec: become the `postgres` user (initdb refuses root)."""
        os.setgid(self._as[1])
        os.setuid(self._as[0])

    def start(self):
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c full_page_writes=off -c max_connections=60")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self):
        """`pg_ctl restart`: every connection is cut, the server is back a moment later."""
        started = time.monotonic()
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-m", "fast", "-w", "-t", "60", "restart")
        return time.monotonic() - started

    def url(self, database="postgres", password=PASSWORD, user=USER, port=None):
        return f"postgresql://{user}:{password}@127.0.0.1:{port or self.port}/{database}"

    def connect(self, database="postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname=database,
                               connect_timeout=10, autocommit=True)

    def create_database(self, name):
        with contextlib.closing(self.connect()) as connection, connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database, sql, *args):
        with contextlib.closing(self.connect(database)) as connection, connection.cursor() as cursor:
            cursor.execute(sql, args or None)
            return cursor.fetchall() if cursor.description else None

    def remove(self):
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def throwaway_server():
    """A started Server, removed at the end even when the body fails (None when none can be
    had: see find_programs)."""
    bin_dir, why = find_programs()
    if bin_dir is None:
        raise RuntimeError(why)
    server = Server(bin_dir)
    try:
        yield server.start()
    finally:
        server.remove()
