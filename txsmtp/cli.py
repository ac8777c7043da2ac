"""
The ``txsmtp`` command (a console script)::

    txsmtp queue list [--json]      the queue, as a table or one JSON object a line
    txsmtp queue show ID [--json]   one message: its envelope and recipients
    txsmtp queue flush [ID]         try deferred recipients (of ID, or all) now
    txsmtp queue hold ID            keep a message from being tried
    txsmtp queue release ID         undo hold: try it now
    txsmtp queue delete ID          remove a message, without any report
    txsmtp --version

Each ``queue`` command takes ``--queue DIR`` (default ``./queue``), or
``--queue postgresql://...`` for a queue in PostgreSQL, which the command
works on directly (its ``flush`` and ``release`` wake every node through
the database's notifications).  While a
server runs on the queue, the command asks it over ``DIR/control.sock``
(:mod:`txsmtp.queue.control`), so that ``flush`` and ``release`` make it try
at once.  With no server (no socket, or a socket nobody listens on any
more) it opens the store itself, does the work and closes it.

Exit status: 0 done; 1 the command could not be done (no such message, no
queue directory, a queue locked by a process that does not answer); 2 a
usage error.
"""

from __future__ import annotations

import errno
import getopt
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NoReturn, TextIO

from twisted.internet import defer, error
from twisted.protocols import amp
from twisted.python import usage

from txsmtp import __version__
from txsmtp.queue.control import CONTROL_SOCKET, StoreControl, UnknownMessageError, connectControl
from txsmtp.queue.errors import QueueError, QueueLockedError

__all__ = [
    "Options",
    "QueueOptions",
    "CommandError",
    "storeFactory",
    "run",
    "main",
    "formatList",
    "formatMessage",
    "DEFAULT_QUEUE",
    "CALL_TIMEOUT",
]

#: The queue directory when ``--queue`` is not given.
DEFAULT_QUEUE = "queue"

#: Seconds to wait for the server's answer (a listing of a large queue takes a while).
CALL_TIMEOUT = 300.0


class CommandError(Exception):
    """The command cannot be done; the message is for the user (exit status 1)."""


class _Help(Exception):
    def __init__(self, options: usage.Options) -> None:
        self.options = options


class _Version(Exception):
    pass


class _Options(usage.Options):
    # usage.Options prints help and calls sys.exit() itself; run() writes to
    # the streams it was given and returns the status instead.
    def opt_help(self) -> NoReturn:
        """Display this help and exit."""
        raise _Help(self)

    opt_h = opt_help

    def opt_version(self) -> NoReturn:
        """Print txsmtp's version and exit."""
        raise _Version()


class _QueueCommand(_Options):
    synopsis = "[--queue DIR]"
    longdesc = ""
    optParameters = [["queue", "q", None, f"The queue directory (default: ./{DEFAULT_QUEUE}), or the postgresql://USER@HOST/DB of a shared queue."]]

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Options may follow the message id (txsmtp queue show ID --queue DIR),
        # as GNU tools allow: move them ahead of it.
        if options:
            try:
                opts, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
            except getopt.error as e:
                raise usage.UsageError(str(e)) from None
            ordered: list[str] = []
            for opt, value in opts:
                takesValue = opt[2:] + "=" in self.longOpt if opt.startswith("--") else opt[1:] + ":" in self.shortOpt
                ordered += [opt, value] if takesValue else [opt]
            options = ordered + ["--"] + args
        super().parseOptions(options)

    def getSynopsis(self) -> str:
        name = self.parent.subCommand if self.parent is not None else "COMMAND"
        return f"Usage: txsmtp queue {name} {self.synopsis}"

    def directory(self) -> str:
        """The queue directory: this command's ``--queue``, else the ``queue`` command's, else the default."""
        parent = self.parent
        return str(self["queue"] or (parent["queue"] if parent is not None else None) or DEFAULT_QUEUE)


class _ListOptions(_QueueCommand):
    synopsis = "[--queue DIR] [--json]"
    optFlags = [["json", None, "Print one JSON object per message, one a line."]]

    def parseArgs(self) -> None:
        pass


class _ShowOptions(_QueueCommand):
    synopsis = "[--queue DIR] [--json] ID"
    optFlags = [["json", None, "Print the message as one JSON object."]]

    def parseArgs(self, messageId: str) -> None:  # type: ignore[override]
        self["id"] = messageId


class _FlushOptions(_QueueCommand):
    synopsis = "[--queue DIR] [ID]"

    def parseArgs(self, messageId: str | None = None) -> None:
        self["id"] = messageId


class _OneMessageOptions(_QueueCommand):
    synopsis = "[--queue DIR] ID"

    def parseArgs(self, messageId: str) -> None:  # type: ignore[override]
        self["id"] = messageId


class QueueOptions(_Options):
    """``txsmtp queue``: the commands on the relay queue."""

    longdesc = (
        "The relay queue of a txsmtp server. While the server runs, the commands go to it over "
        "DIR/control.sock (so that flush and release make it try at once); with no server, they "
        "work on the queue's store directly."
    )

    def getSynopsis(self) -> str:
        return "Usage: txsmtp queue [--queue DIR] COMMAND [options]"
    optParameters = [["queue", "q", None, f"The queue directory (default: ./{DEFAULT_QUEUE}), or the postgresql://USER@HOST/DB of a shared queue."]]
    subCommands = [
        ["list", None, _ListOptions, "List the queued messages and their recipients."],
        ["show", None, _ShowOptions, "Show one message: its envelope and recipients."],
        ["flush", None, _FlushOptions, "Try deferred recipients now (of one message, or all)."],
        ["hold", None, _OneMessageOptions, "Keep a message from being tried until released."],
        ["release", None, _OneMessageOptions, "Release a held message: it is tried now."],
        ["delete", None, _OneMessageOptions, "Remove a message, without any report."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("which queue command? One of: list, show, flush, hold, release, delete.")


class Options(_Options):
    """The options of the ``txsmtp`` command."""

    longdesc = "The command line of txsmtp: see 'txsmtp queue --help'."
    subCommands = [["queue", None, QueueOptions, "Inspect and manage the relay queue (txsmtp queue --help)."]]

    def getSynopsis(self) -> str:
        return "Usage: txsmtp [--version] COMMAND [options]"

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("which command? (txsmtp --help lists them)")


def _openSQLiteStore(directory: str, reactor: Any) -> Any:
    """The store of a queue directory, for when no server runs on it (not opened yet)."""
    if not os.path.exists(os.path.join(directory, "queue.sqlite")):
        raise CommandError(f"{directory} is not a queue directory: it has no queue.sqlite")
    owner = os.stat(directory).st_uid
    if owner != os.geteuid():
        # Opening the store may create files (the lock, SQLite's journal);
        # made by another user, they could keep the server out.
        raise CommandError(f"the queue {directory} belongs to user id {owner}: run txsmtp queue as that user")
    # Imported here: the command's other paths do not need SQLite.
    sqlite = importlib.import_module("txsmtp.queue.sqlite")
    return sqlite.SQLiteStore(directory, reactor=reactor)


#: Makes the store of a queue directory when no server answers on its
#: control socket: ``storeFactory(directory, reactor)`` returns an
#: :class:`~txsmtp.queue.interfaces.IQueueStore`, not opened yet.  The default
#: is ``txsmtp.queue.sqlite.SQLiteStore``; tests put another here.
storeFactory: Callable[[str, Any], Any] = _openSQLiteStore


def _clean(text: Any) -> str:
    # Addresses and the last errors come from other machines: no terminal
    # control sequences from them.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def _time(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _path(address: str) -> str:
    return f"<{_clean(address)}>"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _recipientLines(r: dict[str, Any], indent: str) -> list[str]:
    state = r["state"]
    facts = [state, _plural(r["attempts"], "attempt")]
    if state != "held":
        facts.append(f"next {_time(r['next_attempt'])}")
    lines = [f"{indent}{_clean(r['address'])}  " + ", ".join(facts)]
    if r.get("last_error"):
        lines.append(f"{indent}  last error: {_clean(r['last_error'])}")
    return lines


def formatList(messages: list[dict[str, Any]]) -> str:
    """
    The table ``txsmtp queue list`` prints, from
    :meth:`~txsmtp.queue.model.QueuedMessage.toJSON` objects: for each
    message a line with its id, size (octets), arrival (UTC) and sender,
    then a line for each recipient with its state, attempts and next
    attempt, and its last error under it; the last line counts
    ``N messages, M recipients``.
    """
    lines = []
    if messages:
        width = max(16, *(len(m["id"]) for m in messages))
        lines.append(f"{'ID':<{width}}  {'SIZE':>9}  {'ARRIVAL (UTC)':<20}  SENDER / RECIPIENTS")
        for m in messages:
            lines.append(f"{m['id']:<{width}}  {m.get('size', 0):>9}  {_time(m['arrival']):<20}  {_path(m['sender'])}")
            for r in m["recipients"]:
                lines.extend(_recipientLines(r, "    "))
        lines.append("")
    recipients = sum(len(m["recipients"]) for m in messages)
    lines.append(f"{_plural(len(messages), 'message')}, {_plural(recipients, 'recipient')}")
    return "\n".join(lines) + "\n"


def _client(client: dict[str, Any]) -> str:
    parts = []
    if client.get("peer"):
        parts.append(_clean(client["peer"]))
    if client.get("heloName"):
        parts.append(f"(HELO {_clean(client['heloName'])})")
    if client.get("protocol"):
        protocol = client["protocol"]
        if protocol == "SMTP" and client.get("esmtp"):
            protocol = "ESMTP"
        parts.append(f"over {_clean(protocol)}")
    tls = client.get("tls")
    if tls:
        parts.append(f"with {_clean(tls.get('version'))} {_clean(tls.get('cipher'))}")
    if client.get("authenticated"):
        parts.append(f"authenticated as {_clean(client['authenticated'])}")
    return " ".join(parts) or "-"


def formatMessage(message: dict[str, Any]) -> str:
    """
    What ``txsmtp queue show ID`` prints, from
    :func:`~txsmtp.queue.control.messageDetails`: the envelope (sender,
    arrival, size, RET, ENVID, the client) and each recipient with its
    state, NOTIFY, ORCPT and last error.
    """
    lines = [
        f"Message:    {message['id']}",
        f"Sender:     {_path(message['sender'])}",
        f"Arrival:    {_time(message['arrival'])}",
        f"Size:       {message.get('size', 0)} octets",
    ]
    if message.get("ret"):
        lines.append(f"RET:        {_clean(message['ret'])}")
    if message.get("envid"):
        lines.append(f"ENVID:      {_clean(message['envid'])}")
    lines.append(f"Client:     {_client(message.get('client') or {})}")
    if message.get("queue_id"):
        lines.append(f"Server id:  {_clean(message['queue_id'])}")
    lines.append(f"Recipients: {len(message['recipients'])}")
    for r in message["recipients"]:
        lines.extend(_recipientLines(r, "  "))
        dsn = []
        if r.get("notify") is not None:
            dsn.append("NOTIFY=" + ",".join(_clean(w) for w in r["notify"]))
        if r.get("orcpt") is not None:
            dsn.append("ORCPT=" + ";".join(_clean(p) for p in r["orcpt"]))
        if dsn:
            lines.append("    " + " ".join(dsn))
    return "\n".join(lines) + "\n"


async def _connect(directory: str, reactor: Any) -> tuple[Any, bool, Callable[[], Any]]:
    """
    The :class:`~txsmtp.queue.control.IQueueControl` for the queue: the
    server's, or the store's when no server answers.  :return: it, whether a
    server answers, and what closes it.
    """
    path = os.path.join(directory, CONTROL_SOCKET)
    if os.path.lexists(path):
        try:
            client = await connectControl(path, reactor, timeout=CALL_TIMEOUT)
        except error.ConnectionRefusedError:
            pass  # a socket left by a server that stopped: nobody listens
        except error.ConnectError as e:
            if e.osError != errno.ENOENT:
                raise CommandError(f"cannot reach the server on {path}: {e.args[-1] if e.args else e}") from None
        else:
            return client, True, client.close
    store = storeFactory(directory, reactor)
    try:
        await store.open()
    except QueueLockedError:
        raise CommandError(
            f"the queue {directory} is locked by another process, but no server answers on {path};"
            " try again once that server has started (or stopped)"
        ) from None
    except CommandError:
        raise
    except Exception as e:
        raise CommandError(f"cannot open the queue {directory}: {e}") from None
    return StoreControl(store), False, store.close


async def _connectDatabase(url: str, reactor: Any) -> tuple[Any, Callable[[], Any]]:
    """
    The :class:`~txsmtp.queue.control.IQueueControl` of a queue in
    PostgreSQL: the store itself, opened under a node name of its own (it
    takes no leases), whose flush and release wake every node through the
    database's notifications.
    """
    try:
        postgres = importlib.import_module("txsmtp.queue.postgres")
    except ImportError:
        raise CommandError("a PostgreSQL queue needs psycopg 3: pip install 'txsmtp[postgresql]'") from None
    store = postgres.PostgresStore(
        url, reactor=reactor, node=f"txsmtp-queue-{socket.gethostname()}-{os.getpid()}", poolSize=1,
        pollInterval=3600.0,
    )  # fmt: skip
    try:
        await store.open()
    except Exception as e:
        raise CommandError(f"cannot open the queue {postgres.redactURL(url)}: {e}") from None
    return StoreControl(store), store.close


async def _queueCommand(config: Options, reactor: Any, out: TextIO, err: TextIO) -> int:
    queueOptions = config.subOptions
    name = queueOptions.subCommand
    command = queueOptions.subOptions
    directory = command.directory()
    shared = directory.startswith(("postgresql://", "postgres://"))
    if shared:
        control, close = await _connectDatabase(directory, reactor)
        serverRuns = True  # flush and release notify every node
    elif not os.path.isdir(directory):
        raise CommandError(f"no queue directory at {directory} (--queue DIR names it)")
    else:
        control, serverRuns, close = await _connect(directory, reactor)
    try:
        messageId = command.get("id")
        if name == "list":
            messages = await control.list()
            if command["json"]:
                out.write("".join(json.dumps(m) + "\n" for m in messages))
            else:
                out.write(formatList(messages))
        elif name == "show":
            message = await control.show(messageId)
            out.write(json.dumps(message) + "\n" if command["json"] else formatMessage(message))
        elif name == "flush":
            count = await control.flush(messageId)
            target = f"{messageId}: " if messageId else ""
            later = "" if serverRuns else " (no server runs on this queue: they go when it starts)"
            out.write(f"{target}{_plural(count, 'recipient')} due now{later}\n")
        else:
            await getattr(control, name)(messageId)
            out.write(f"{messageId}: {name}d\n" if name != "hold" else f"{messageId}: held\n")
    except UnknownMessageError:
        where = "" if shared else f" {directory}"
        raise CommandError(f"no message {_clean(messageId)} in the queue{where}") from None
    finally:
        await defer.maybeDeferred(close)
    return 0


async def _run(argv: list[str], reactor: Any, out: TextIO, err: TextIO) -> int:
    config = Options()
    try:
        config.parseOptions(argv)
    except _Help as h:
        out.write(str(h.options) + "\n")
        return 0
    except _Version:
        out.write(f"txsmtp {__version__}\n")
        return 0
    except usage.UsageError as e:
        err.write(f"txsmtp: {e}\nRun 'txsmtp --help' or 'txsmtp queue --help' for the commands and options.\n")
        return 2
    try:
        return await _queueCommand(config, reactor, out, err)
    except CommandError as e:
        err.write(f"txsmtp: {e}\n")
    except defer.TimeoutError as e:
        err.write(f"txsmtp: {e}\n")
    except (error.ConnectionLost, error.ConnectionDone):
        err.write("txsmtp: the server closed the connection before answering\n")
    except (amp.RemoteAmpError, QueueError) as e:
        err.write(f"txsmtp: the queue could not do it: {e}\n")
    return 1


def run(argv: list[str], reactor: Any = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> defer.Deferred[int]:
    """
    Run the ``txsmtp`` command with the arguments ``argv`` (without the
    program's name) on a running reactor.

    :return: a Deferred firing with the exit status.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    return defer.Deferred.fromCoroutine(_run(list(argv), reactor, out, err))


def main(argv: list[str] | None = None) -> NoReturn:
    """The console script: run the command on the reactor and exit with its status."""
    from twisted.internet import task

    args = sys.argv[1:] if argv is None else argv

    def go(reactor: Any) -> defer.Deferred[None]:
        def done(status: int) -> None:
            if status:
                raise SystemExit(status)

        def pipeClosed(failure: Any) -> None:
            # txsmtp queue list | head: the reader went away; no traceback.
            failure.trap(BrokenPipeError)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1)

        return run(args, reactor).addCallback(done).addErrback(pipeClosed)

    task.react(go)
    raise SystemExit(0)  # react() exits; this is for the type checker


if __name__ == "__main__":
    main()
