"""
A real Postfix for the tests (and the relay benchmark): a private instance
started from its own configuration directory, on loopback.

:func:`writeConfig` writes ``main.cf`` and ``master.cf`` into a directory
of its own, with its own ``queue_directory`` and ``data_directory``, one
``smtpd`` listening on ``127.0.0.1:PORT`` (a ``master.cf`` service of that
name), ``mynetworks = 127.0.0.0/8``, no TLS, no DNS (``smtp_dns_support_level
= disabled``: next hops are given as ``[address]:port``), and logging by
``postlogd`` into ``maillog_file`` instead of syslog.  Postfix fsyncs a queue
file before its ``250`` and has no setting to stop it, so this instance is
as durable as a production one.  It is either

- a relay: mail for any domain, from ``mynetworks``, goes on to
  ``relayhost = [host]:port``; or
- the final destination of the domains of some mailboxes: each address is
  delivered by Postfix's ``virtual(8)`` agent into a Maildir under
  ``mail/DOMAIN/LOCALPART/`` (``virtual_mailbox_maps`` as a ``texthash:``
  table, so nothing needs ``postmap``), as ``nobody``.

:func:`startPostfix` runs ``postfix -c CONFDIR start-fg``: ``start``, with the
``master(8)`` kept in the foreground, so that it is a child of the test's
reactor and its log (``maillog_file = /dev/stdout``) arrives as process
output.  Readiness is two events, never a sleep: the master's ``daemon
started`` line, then one connection that gets Postfix's ``220`` greeting.
Cleanup is ``postfix -c CONFDIR stop`` and the master's exit (``postfix
abort`` and SIGKILL if it is not gone in time).

The ``master(8)`` must start as root (it binds and then runs its daemons
as ``postfix``); without root, or without Postfix, the test is skipped
(a failure under ``TXSMTP_REQUIRE_PEERS=1``).  Facts used here: ``man 5
postconf`` (Postfix 3.7) and ``man 1 postfix`` (``start-fg``), ``man 8
master`` (``-s`` keeps stdout for ``maillog_file = /dev/stdout``),
MAILLOG_README.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from tests.peers import PEERS_REQUIRED, requirePeer
from tests.twistd_helpers import connectClient, runProcess, withTimeout

__all__ = [
    "PostfixLayout",
    "RunningPostfix",
    "freePort",
    "requirePostfix",
    "startPostfix",
    "writeConfig",
]

#: the reactor, typed loosely (its interfaces are provided dynamically)
REACTOR: Any = reactor

LOOPBACK = "127.0.0.1"
HOSTNAME = "postfix.test.invalid"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
WAIT_TIMEOUT = 30.0

_STARTED = re.compile(r"postfix/master\[\d+\]: daemon started")
_IN_USE = "Address already in use"

#: The services this instance needs, none chrooted (no copies of /etc).
_MASTER_SERVICES = """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def freePort() -> int:
    """A port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def requirePostfix() -> str:
    """
    The path of ``postfix``; skip (or fail, under
    ``TXSMTP_REQUIRE_PEERS=1``) when it is missing or we are not root.
    """
    path = requirePeer("postfix")
    if os.geteuid() != 0:
        message = "a private Postfix instance must be started as root"
        if PEERS_REQUIRED:
            raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
        raise SkipTest(message)
    return path


@dataclass
class PostfixLayout:
    """
    Where one instance lives (everything under :attr:`root`).

    :ivar root: the instance's own directory.
    :ivar conf: its ``config_directory`` (``main.cf``, ``master.cf``).
    :ivar queue: its ``queue_directory``.
    :ivar data: its ``data_directory``.
    :ivar mail: ``virtual_mailbox_base``: ``DOMAIN/LOCALPART/`` Maildirs.
    :ivar maillog: its ``maillog_file``.
    :ivar port: the port its ``smtpd`` listens on (127.0.0.1).
    :ivar mailboxes: the addresses it is the final destination for.
    """

    root: str
    conf: str
    queue: str
    data: str
    mail: str
    maillog: str
    port: int
    mailboxes: tuple[str, ...] = field(default=())

    def maildir(self, address: str) -> str:
        """The Maildir of one of :attr:`mailboxes`."""
        local, _, domain = address.rpartition("@")
        return os.path.join(self.mail, domain.lower(), local)


def writeConfig(
    root: str,
    port: int,
    *,
    relayHost: str | None = None,
    mailboxes: tuple[str, ...] | list[str] = (),
    hostname: str = HOSTNAME,
    maillog: str = "/dev/stdout",
    extra: dict[str, str] | None = None,
) -> PostfixLayout:
    """
    Write a Postfix instance's configuration under ``root`` (which must
    exist and be reachable by the ``postfix`` user) and make its
    directories.

    :param port: the port its ``smtpd`` listens on, on 127.0.0.1.
    :param relayHost: ``"[127.0.0.1]:2525"``: send every message for a
        domain it is not the destination of there (``relayhost``).
    :param mailboxes: addresses it delivers itself, each into a Maildir.
    :param maillog: ``"/dev/stdout"`` (for :func:`startPostfix`) or a file.
    :param extra: further ``main.cf`` settings, which win.
    """
    layout = PostfixLayout(
        root=root,
        conf=os.path.join(root, "conf"),
        queue=os.path.join(root, "queue"),
        data=os.path.join(root, "data"),
        mail=os.path.join(root, "mail"),
        maillog=maillog,
        port=port,
        mailboxes=tuple(mailboxes),
    )
    postfix = pwd.getpwnam("postfix")
    nobody = pwd.getpwnam("nobody")
    for directory in (layout.conf, layout.queue, layout.data, layout.mail):
        os.makedirs(directory, exist_ok=True)
    # The master takes its lock in data_directory as the mail_owner;
    # queue_directory's subdirectories are made by `postfix start` itself.
    os.chown(layout.data, postfix.pw_uid, postfix.pw_gid)
    # virtual(8) delivers as nobody and makes DOMAIN/LOCALPART/{tmp,new,cur}.
    os.chown(layout.mail, nobody.pw_uid, nobody.pw_gid)

    settings: dict[str, str] = {
        "compatibility_level": "3.6",
        "queue_directory": layout.queue,
        "data_directory": layout.data,
        "myhostname": hostname,
        "mydomain": "test.invalid",
        "myorigin": "$myhostname",
        "mydestination": "",
        "inet_interfaces": LOOPBACK,
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": relayHost or "",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        # No header rewriting for clients: what arrives is passed on as is.
        "local_header_rewrite_clients": "",
        "smtpd_peername_lookup": "no",
        "smtp_dns_support_level": "disabled",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "none",
        "biff": "no",
        "maillog_file": maillog,
        "maillog_file_prefixes": "/dev/stdout, " + root,
    }
    if mailboxes:
        domains = sorted({a.rpartition("@")[2].lower() for a in mailboxes})
        table = os.path.join(layout.conf, "vmailbox")
        with open(table, "w", encoding="ascii") as f:
            for address in mailboxes:
                local, _, domain = address.rpartition("@")
                # A trailing slash makes it a Maildir (virtual(8)).
                f.write(f"{address} {domain.lower()}/{local}/\n")
        settings.update(
            {
                "virtual_mailbox_domains": ", ".join(domains),
                "virtual_mailbox_base": layout.mail,
                "virtual_mailbox_maps": "texthash:" + table,
                "virtual_uid_maps": f"static:{nobody.pw_uid}",
                "virtual_gid_maps": f"static:{nobody.pw_gid}",
                "virtual_minimum_uid": str(min(nobody.pw_uid, 100)),
            }
        )
    settings.update(extra or {})
    with open(os.path.join(layout.conf, "main.cf"), "w", encoding="ascii") as f:
        for name, value in settings.items():
            f.write(f"{name} = {value}\n")
    with open(os.path.join(layout.conf, "master.cf"), "w", encoding="ascii") as f:
        f.write(f"{LOOPBACK}:{port} inet n - n - - smtpd\n")
        f.write(_MASTER_SERVICES)
    return layout


def makeRoot(prefix: str = "txsmtp-postfix-") -> str:
    """A new directory under the system's temporary directory that ``postfix`` may enter."""
    root = tempfile.mkdtemp(prefix=prefix)
    os.chmod(root, 0o755)
    return root


class _MasterProcess(protocol.ProcessProtocol):
    """``postfix start-fg``: collects its log and tells waiters about lines and exit."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.running = True
        self.exitValue: Any = None
        self._waiters: list[tuple[re.Pattern[str], int, defer.Deferred[list[re.Match[str]]]]] = []
        self._ended: list[defer.Deferred[Any]] = []

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self._waiters:
            text = self.text
            ready, waiting = [], []
            for pattern, count, d in self._waiters:
                found = list(pattern.finditer(text))
                if len(found) >= count:
                    ready.append((d, found))
                else:
                    waiting.append((pattern, count, d))
            self._waiters = waiting
            for d, found in ready:
                d.callback(found)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.exitValue = reason.value
        waiters, self._waiters = self._waiters, []
        for pattern, count, d in waiters:
            d.errback(
                AssertionError(
                    f"Postfix exited ({reason.value}) before logging {pattern.pattern!r}"
                    f" {count} times; its log:\n{self.text}"
                )
            )
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(reason.value)

    def waitFor(
        self, pattern: re.Pattern[str], count: int = 1
    ) -> defer.Deferred[list[re.Match[str]]]:
        found = list(pattern.finditer(self.text))
        if len(found) >= count:
            return defer.succeed(found)
        if not self.running:
            return defer.fail(AssertionError(f"Postfix is not running; its log:\n{self.text}"))
        d: defer.Deferred[list[re.Match[str]]] = defer.Deferred()
        self._waiters.append((pattern, count, d))
        return d

    def whenEnded(self) -> defer.Deferred[Any]:
        if not self.running:
            return defer.succeed(self.exitValue)
        d: defer.Deferred[Any] = defer.Deferred()
        self._ended.append(d)
        return d

    def signal(self, name: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass


class RunningPostfix:
    """
    A Postfix instance started by :func:`startPostfix`.

    :ivar layout: its :class:`PostfixLayout` (:attr:`PostfixLayout.port`
        is where its ``smtpd`` listens).
    """

    def __init__(self, executable: str, process: _MasterProcess, layout: PostfixLayout) -> None:
        self.executable = executable
        self.process = process
        self.layout = layout

    @property
    def port(self) -> int:
        return self.layout.port

    @property
    def log(self) -> str:
        """Its log so far (``maillog_file = /dev/stdout``)."""
        return self.process.text

    def waitForLog(
        self, pattern: str, count: int = 1, timeout: float = WAIT_TIMEOUT
    ) -> defer.Deferred[list[re.Match[str]]]:
        """Fire with the first ``count`` matches of ``pattern`` in its log, now or later."""
        return withTimeout(
            self.process.waitFor(re.compile(pattern), count),
            timeout,
            lambda: f"fewer than {count} {pattern!r} in Postfix's log:\n{self.log}",
        )

    def maildirFiles(self, address: str) -> list[str]:
        """The files in ``new/`` of ``address``'s Maildir (sorted full paths)."""
        new = os.path.join(self.layout.maildir(address), "new")
        if not os.path.isdir(new):
            return []
        return sorted(os.path.join(new, name) for name in os.listdir(new))

    async def postfix(self, command: str) -> None:
        """Run ``postfix -c CONFDIR COMMAND`` (``stop``, ``abort``, ``flush``...)."""
        result = await runProcess(
            self.executable, ["-c", self.layout.conf, command], timeout=STOP_TIMEOUT
        )
        if result.code != 0:
            raise AssertionError(f"postfix {command} failed: {result.describe()}")

    async def stop(self) -> None:
        """
        ``postfix -c CONFDIR stop``, and wait for the master (and every
        daemon, which hold its output) to be gone; ``postfix abort`` then
        SIGKILL when that takes longer than :data:`STOP_TIMEOUT`.
        """
        if not self.process.running:
            return
        ended = self.process.whenEnded()
        try:
            await self.postfix("stop")
            await withTimeout(ended, STOP_TIMEOUT, lambda: "Postfix still running after stop")
        except AssertionError:
            if self.process.running:
                try:
                    await self.postfix("abort")
                except AssertionError:
                    pass
                self.process.signal("KILL")
            raise


async def startPostfix(
    testCase: Any,
    *,
    relayHost: str | None = None,
    mailboxes: tuple[str, ...] | list[str] = (),
    hostname: str = HOSTNAME,
    extra: dict[str, str] | None = None,
) -> RunningPostfix:
    """
    Configure (:func:`writeConfig`) and start a Postfix instance on a free
    port of 127.0.0.1; return once it logged ``daemon started`` and
    greeted one connection with ``220``.  A port taken in the meantime
    (its master then exits with ``Address already in use``) means another
    try on a new port, up to five.  Stopped, and its directory removed, in
    the test's cleanup.
    """
    executable = requirePostfix()
    root = makeRoot()
    testCase.addCleanup(shutil.rmtree, root, True)
    for attempt in range(5):
        instance = os.path.join(root, f"i{attempt}")
        os.mkdir(instance)
        os.chmod(instance, 0o755)
        layout = writeConfig(
            instance,
            freePort(),
            relayHost=relayHost,
            mailboxes=mailboxes,
            hostname=hostname,
            extra=extra,
        )
        process = _MasterProcess()
        args = [executable, "-c", layout.conf, "start-fg"]
        REACTOR.spawnProcess(process, executable, args, env=dict(os.environ), path=instance)
        running = RunningPostfix(executable, process, layout)
        testCase.addCleanup(running.stop)
        try:
            await withTimeout(
                process.waitFor(_STARTED),
                START_TIMEOUT,
                lambda p=process: f"Postfix did not start; its log:\n{p.text}",
            )
        except AssertionError:
            if _IN_USE in process.text:
                await running.stop()
                continue
            raise
        if _IN_USE in process.text:
            await running.stop()
            continue
        client = await connectClient(testCase, layout.port)
        greeting = client.replies[0]
        if greeting.code != 220:
            raise AssertionError(f"Postfix greeted with {greeting}; its log:\n{process.text}")
        await client.command(b"QUIT")
        await client.whenLost()
        return running
    raise AssertionError("Postfix found no free port in 5 tries")
