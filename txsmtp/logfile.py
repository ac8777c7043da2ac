"""
A cheap text log for ``twistd smtp``.

The server logs one line per transaction by default.  Twisted's text file
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
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from twisted.logger import ILogObserver, formatEventAsClassicLogText
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["TextLogObserver", "twistdLogger", "twistdObserver"]

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


def twistdObserver(options: Any) -> TextLogObserver:
    """
    The observer for twistd's options (``logfile``, ``nodaemon``), chosen
    as twistd chooses its own: standard output for ``--logfile=-`` or
    ``-n`` without a log file, else ``--logfile`` (default ``twistd.log``),
    rotated by :class:`~twisted.python.logfile.LogFile`.
    """
    name = options.get("logfile") or ""
    if name == "-" or (not name and options.get("nodaemon")):
        return TextLogObserver(sys.stdout)
    return TextLogObserver(LogFile.fromFullPath(name or "twistd.log"))


#: twistd's log options, noted by ``twistd smtp`` for :func:`twistdLogger`.
twistdOptions: dict[str, Any] = {}


def twistdLogger() -> TextLogObserver:
    """The factory ``twistd smtp`` names as ``--logger``: :func:`twistdObserver` of twistd's options."""
    return twistdObserver(twistdOptions)
