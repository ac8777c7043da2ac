"""
A cheap text log for ``twistd smtp``.

The server logs one line per transaction and one per connection.  Twisted's text file
observer formats every event through its general formatter (a format
string parsed per event, a timestamp built per event) and flushes per line,
about 29 µs per line into a rotated log file on the project's machine: at
thousands of messages a second, a tenth of the server's time.  This
observer writes the same lines (``TIMESTAMP [namespace#level] text``) at
about a quarter of that: txsmtp's own events carry their text ready-made
(the ``text`` field), the timestamp is formatted once a second, and any
other event (Twisted's own, failures with their tracebacks) goes through
Twisted's :func:`~twisted.logger.formatEventAsClassicLogText` as before.

``twistd smtp`` uses it unless ``--logger`` or ``--syslog`` is given;
``--logfile`` works as usual (``-`` for standard output, rotation by
:class:`twisted.python.logfile.LogFile`).

:class:`JSONLogObserver` writes one JSON object per line instead (``twistd
smtp --log-format json``, or ``twistd --logger txsmtp.logfile.jsonLogger``
for any twistd plugin): the time, the level, the namespace, the line's
text, every field of the event, and a failure's traceback whole.  See
docs/operations/logs.rst.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import ILogObserver, eventAsText, formatEventAsClassicLogText
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["JSONLogObserver", "TextLogObserver", "jsonLogger", "jsonObserver", "twistdLogger", "twistdObserver"]

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


@implementer(ILogObserver)
class TextLogObserver:
    """
    Write log events as lines of text to ``outFile`` (anything with
    ``write`` and ``flush``), each line flushed as it is written so that an
    operator's ``tail -f`` sees it at once.
    """

    __slots__ = ("_out", "_second", "_stamp")

    def __init__(self, outFile: IO[str] | Any) -> None:
        self._out = outFile
        self._second = -1
        self._stamp = ""

    def __call__(self, event: dict[str, Any]) -> None:
        text = event.get("text")
        if text is None or "log_failure" in event or event.get("log_format") != "{text}":
            line = formatEventAsClassicLogText(event)
            if line is None:
                return
        else:
            when = event.get("log_time")
            if when is None:
                stamp = "-"
            else:
                second = int(when)
                if second != self._second:
                    self._second = second
                    self._stamp = time.strftime(_TIME_FORMAT, time.localtime(when))
                stamp = self._stamp
            level = event.get("log_level")
            levelName = level.name if level is not None else "-"
            line = f"{stamp} [{event.get('log_namespace', '-')}#{levelName}] {text}\n"
        out = self._out
        out.write(line)
        out.flush()


#: Keys of twisted.logger's own (``log_*``) and of the legacy log system
#: that the JSON record does not copy (it says the same in its own keys).
_LEGACY_KEYS = frozenset(["message", "format", "isError", "system", "time", "why", "failure"])


@implementer(ILogObserver)
class JSONLogObserver:
    """
    Write log events as JSON objects to ``outFile``, one per line, each
    line flushed as it is written.

    Each object has ``time`` (UTC, ISO 8601 with microseconds), ``level``
    (``info``, ``warn``, ``error``, ``critical``, ``debug``), ``namespace``,
    ``system`` (the legacy log system of Twisted's own events, when any),
    ``text`` (the line the text log would show, without its time stamp),
    every field of the event (``queueId``, ``peer``, ``session``...; a value
    JSON cannot hold is written as its ``repr``), and ``traceback`` for a
    failure (the whole text, as the text log shows it).
    """

    __slots__ = ("_out",)

    def __init__(self, outFile: IO[str] | Any) -> None:
        self._out = outFile

    def __call__(self, event: dict[str, Any]) -> None:
        record: dict[str, Any] = {}
        when = event.get("log_time")
        record["time"] = (
            datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
            if when is not None
            else None
        )
        level = event.get("log_level")
        record["level"] = level.name if level is not None else None
        record["namespace"] = event.get("log_namespace")
        system = event.get("log_system")
        if system is not None:
            record["system"] = system
        for key, value in event.items():
            if key.startswith("log_") or key in _LEGACY_KEYS:
                continue
            record[key] = value
        text = event.get("text")
        if not isinstance(text, str) or event.get("log_format") != "{text}":
            text = eventAsText(event, includeTraceback=False, includeTimestamp=False, includeSystem=False)
        record["text"] = text
        failure = event.get("log_failure")
        if failure is not None:
            try:
                record["traceback"] = failure.getTraceback()
            except Exception:
                record["traceback"] = repr(failure)
        try:
            line = json.dumps(record, default=repr, ensure_ascii=False)
        except (TypeError, ValueError):
            # A field JSON cannot take (a dict with keys that are not
            # strings): the line's text and the basics, never nothing.
            basics = ("time", "level", "namespace", "system", "text", "traceback")
            line = json.dumps({k: record[k] for k in basics if k in record}, default=repr, ensure_ascii=False)
        out = self._out
        out.write(line + "\n")
        out.flush()


def _outFile(options: Any) -> Any:
    name = options.get("logfile") or ""
    if name == "-" or (not name and options.get("nodaemon")):
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")


def twistdObserver(options: Any) -> TextLogObserver:
    """
    The observer for twistd's options (``logfile``, ``nodaemon``), chosen
    as twistd chooses its own: standard output for ``--logfile=-`` or
    ``-n`` without a log file, else ``--logfile`` (default ``twistd.log``),
    rotated by :class:`~twisted.python.logfile.LogFile`.
    """
    return TextLogObserver(_outFile(options))


#: twistd's log options, noted by ``twistd smtp`` for :func:`twistdLogger`.
twistdOptions: dict[str, Any] = {}


def twistdLogger() -> TextLogObserver:
    """The factory ``twistd smtp`` names as ``--logger``: :func:`twistdObserver` of twistd's options."""
    return twistdObserver(twistdOptions)


def jsonObserver(options: Any) -> JSONLogObserver:
    """:class:`JSONLogObserver` into the file :func:`twistdObserver` would write to."""
    return JSONLogObserver(_outFile(options))


def jsonLogger() -> JSONLogObserver:
    """
    The factory ``twistd smtp --log-format json`` names as ``--logger``.

    ``twistd --logger txsmtp.logfile.jsonLogger smtp ...`` gives the same.
    Under another twistd plugin it writes to ``twistd.log`` (twistd's
    ``--logfile`` and ``-n`` are noted by ``twistd smtp`` only).
    """
    return jsonObserver(twistdOptions)
