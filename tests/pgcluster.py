"""
A private PostgreSQL cluster for the tests that stop and restart the
database (so the shared test server of ``TXSMTP_TEST_POSTGRES`` is never
disturbed).

:func:`privateCluster` runs Debian's ``initdb`` into a fresh directory
with a short path under ``/tmp`` (owned by ``postgres`` when we are root:
``initdb`` and ``pg_ctl`` refuse to run as root), starts it with
``pg_ctl`` on a free port of 127.0.0.1 (its UNIX socket in the same
directory), creates a role and a database, and stops and removes it in
the test's cleanup.  ``trust`` authentication for 127.0.0.1 only: the
role still has a password, so the URL is the same as in production.

Starting and stopping in set-up and cleanup block (``pg_ctl -w``); inside
a test :meth:`PrivateCluster.stop` and :meth:`PrivateCluster.start` run
``pg_ctl`` through the reactor.

Missing binaries skip the test, or fail it under
``TXSMTP_REQUIRE_PEERS=1`` (as :func:`tests.peers.requirePeer` does).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.peers import PEERS_REQUIRED
from tests.test_client_interop import freePort
from tests.twistd_helpers import runProcess

__all__ = ["PrivateCluster", "findBinaries", "privateCluster"]

#: the role and the database the cluster is made with
USER = "txsmtp"
PASSWORD = "txsmtp"
DATABASE = "txsmtp"


def _unavailable(problem: str) -> None:
    if PEERS_REQUIRED:
        raise AssertionError(problem + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
    raise SkipTest(problem)


def findBinaries() -> str:
    """
    The newest ``/usr/lib/postgresql/VERSION/bin`` holding ``initdb`` and
    ``pg_ctl`` (``PG_BINDIR`` overrides it).

    :raise SkipTest: when there is none (AssertionError under
        ``TXSMTP_REQUIRE_PEERS=1``).
    """
    candidates = [os.environ["PG_BINDIR"]] if os.environ.get("PG_BINDIR") else []

    def version(path: str) -> float:
        try:
            return float(path.split(os.sep)[-2])
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return bindir
    _unavailable("PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)")
    raise AssertionError("unreachable")


def _asOwner() -> tuple[list[str], int | None, int | None]:
    """The command prefix to run as the cluster's owner, and its uid and gid (if not us)."""
    if os.geteuid() != 0:
        return [], None, None
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root, and there is no 'postgres' user to own a test cluster")
        raise AssertionError("unreachable") from None
    if not os.access(runuser, os.X_OK):
        _unavailable("running as root, and runuser is missing (initdb refuses root)")
    return [runuser, "-u", "postgres", "--"], owner.pw_uid, owner.pw_gid


class PrivateCluster:
    """
    One PostgreSQL cluster of a test.

    :ivar port: its TCP port on 127.0.0.1.
    :ivar directory: its own directory: ``data/`` (the cluster), the UNIX
        socket and ``log``.
    :ivar url: a libpq URL of the test role and database over TCP.
    """

    def __init__(
        self,
        bindir: str,
        directory: str,
        port: int,
        addresses: tuple[str, ...] = ("127.0.0.1",),
        trustNetworks: tuple[str, ...] = (),
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = bindir
        self.settings = dict(settings or {})
        self.addresses = addresses
        self.trustNetworks = trustNetworks
        self.directory = directory
        self.data = os.path.join(directory, "data")
        self.logFile = os.path.join(directory, "log")
        self.port = port
        self.url = self.urlFor(addresses[0])
        #: ``postgres`` (the superuser) over TCP, for set-up and checks
        self.adminURL = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.prefix, self.uid, self.gid = _asOwner()

    def urlFor(self, address: str) -> str:
        """The URL of the test role and database through ``address`` (one of :attr:`addresses`)."""
        return f"postgresql://{USER}:{PASSWORD}@{address}:{self.port}/{DATABASE}"

    # -- commands ------------------------------------------------------------------

    def _command(self, program: str, *args: str) -> list[str]:
        return [*self.prefix, os.path.join(self.bindir, program), *args]

    def _ctl(self, action: str, *extra: str) -> list[str]:
        listen = ",".join(self.addresses)
        options = f"-p {self.port} -k {self.directory} -c listen_addresses={listen} -c fsync=off"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        return self._command(
            "pg_ctl", "-D", self.data, "-l", self.logFile, "-o", options, "-w", "-t", "60", action, *extra
        )

    def _run(self, args: list[str]) -> None:
        """Run a command to its end (blocking: set-up and cleanup only)."""
        result = subprocess.run(args, capture_output=True, timeout=120, cwd=self.directory)
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}\n"
                f"log:\n{self.log()}"
            )

    async def _runAsync(self, args: list[str]) -> None:
        result = await runProcess(args[0], args[1:], cwd=self.directory, timeout=90)
        if result.code != 0:
            raise AssertionError(f"{' '.join(args)}: {result.describe()}\nlog:\n{self.log()}")

    def log(self) -> str:
        """The server's log so far."""
        try:
            with open(self.logFile, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    # -- life ------------------------------------------------------------------------

    def create(self) -> None:
        """``initdb``, start, and create the role and database (blocking)."""
        os.makedirs(self.data, mode=0o700)
        if self.uid is not None:
            for path in (self.directory, self.data):
                os.chown(path, self.uid, self.gid)  # type: ignore[arg-type]
        self._run(
            self._command(
                "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync", "--no-instructions",
            )
        )  # fmt: skip
        if self.trustNetworks:
            with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
                for network in self.trustNetworks:
                    f.write(f"host all all {network} trust\n")
        self.startBlocking()
        import psycopg

        with psycopg.connect(self.adminURL, autocommit=True, connect_timeout=10) as db:
            db.execute(f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
            db.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")

    def startBlocking(self) -> None:
        self._run(self._ctl("start"))

    def stopBlocking(self, mode: str = "fast") -> None:
        self._run(self._ctl("stop", "-m", mode))

    def start(self) -> Any:
        """Start the stopped server; a coroutine that ends once it accepts connections."""
        return self._runAsync(self._ctl("start"))

    def stop(self, mode: str = "fast") -> Any:
        """
        Stop the server (``pg_ctl stop -m MODE``: ``fast`` disconnects every
        session; ``immediate`` is a crash); a coroutine that ends once it is gone.
        """
        return self._runAsync(self._ctl("stop", "-m", mode))

    def running(self) -> bool:
        return os.path.exists(os.path.join(self.data, "postmaster.pid"))

    def destroy(self) -> None:
        """Stop the server if it runs, and remove the directory (cleanup)."""
        try:
            if self.running():
                subprocess.run(self._ctl("stop", "-m", "immediate"), capture_output=True, timeout=120)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def privateCluster(
    testCase: Any,
    addresses: tuple[str, ...] = ("127.0.0.1",),
    trustNetworks: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
) -> PrivateCluster:
    """
    Make, start and answer a :class:`PrivateCluster` for ``testCase`` (a
    trial ``TestCase``): stopped and removed in its cleanup.  Blocking.

    :param addresses: where it listens (the first one is in :attr:`PrivateCluster.url`).
    :param trustNetworks: more client networks (CIDR) let in without a password.
    :param settings: server settings (``postgres -c NAME=VALUE``).
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed: pip install 'txsmtp[postgresql]'")
    bindir = findBinaries()
    directory = tempfile.mkdtemp(prefix="txpg-", dir="/tmp")
    cluster = PrivateCluster(bindir, directory, freePort(), addresses, trustNetworks, settings)
    testCase.addCleanup(cluster.destroy)
    cluster.create()
    return cluster
