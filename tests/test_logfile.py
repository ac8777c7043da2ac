"""txsmtp.logfile: the same lines as Twisted's text observer, written cheaply."""

from __future__ import annotations

import io

from twisted.logger import Logger, LogLevel, LogPublisher, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial import unittest

from txsmtp import logfile
from txsmtp.logfile import TextLogObserver, twistdObserver


class TextLogObserverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.out = io.StringIO()
        self.publisher = LogPublisher()
        self.publisher.addObserver(TextLogObserver(self.out))
        self.log = Logger(namespace="txsmtp.server", observer=self.publisher)
        self.classic: list[str] = []
        self.publisher.addObserver(
            lambda e: self.classic.append(formatEventAsClassicLogText(e) or "")
        )

    def test_textEventsAsTwistedWritesThem(self) -> None:
        """A txsmtp event (format ``{text}``) gives the line Twisted's own observer gives."""
        self.log.info("{text}", text="accepted id=ABC from=<a@example.com> rcpts=1", queueId="ABC")
        self.log.warn("{text}", text="discarded 5 octets after STARTTLS")
        self.assertEqual(self.out.getvalue(), "".join(self.classic))
        self.assertIn("[txsmtp.server#warn] discarded 5 octets", self.out.getvalue())

    def test_otherEventsThroughTwistedsFormatter(self) -> None:
        """Any other event, a failure with its traceback included, is formatted by Twisted."""
        self.log.info("closing connection from {peer}: {why}", peer="192.0.2.1", why="timeout")
        try:
            raise ZeroDivisionError("for the test")
        except ZeroDivisionError:
            self.log.failure("{text}", Failure(), text="hook failed")
        self.assertEqual(self.out.getvalue(), "".join(self.classic))
        self.assertIn("closing connection from 192.0.2.1: timeout", self.out.getvalue())
        self.assertIn("ZeroDivisionError", self.out.getvalue())

    def test_levelsAndTimes(self) -> None:
        """Lines of one second share one timestamp string; each has its level."""
        for level in (LogLevel.debug, LogLevel.error):
            self.log.emit(level, "{text}", text=f"at {level.name}")
        lines = self.out.getvalue().splitlines()
        self.assertEqual(
            [line.split(" ", 1)[1] for line in lines],
            ["[txsmtp.server#debug] at debug", "[txsmtp.server#error] at error"],
        )


class TwistdObserverTests(unittest.TestCase):
    def test_choosesAsTwistdDoes(self) -> None:
        import sys

        self.assertIs(twistdObserver({"logfile": "-"})._out, sys.stdout)
        self.assertIs(twistdObserver({"logfile": None, "nodaemon": True})._out, sys.stdout)
        path = self.mktemp()
        observer = twistdObserver({"logfile": path, "nodaemon": True})
        observer(
            {
                "log_format": "{text}",
                "text": "hello",
                "log_namespace": "t",
                "log_time": 0.0,
                "log_level": LogLevel.info,
            }
        )
        observer._out.close()
        with open(path) as f:
            self.assertTrue(f.read().endswith(" [t#info] hello\n"))

    def test_twistdSmtpNamesIt(self) -> None:
        """``twistd smtp`` without --logger or --syslog names txsmtp's observer factory; with one, leaves it."""
        from twisted.scripts.twistd import ServerOptions

        self.addCleanup(setattr, logfile, "twistdOptions", dict(logfile.twistdOptions))
        options = ServerOptions()
        options.parseOptions(["-n", "--logfile=-", "smtp", "--deliver", "discard"])
        self.assertIs(options["logger"], logfile.twistdLogger)
        self.assertEqual(logfile.twistdOptions, {"logfile": "-", "nodaemon": True})
        options = ServerOptions()
        options.parseOptions(
            ["-n", "--logger=twisted.logger.jsonFileLogObserver", "smtp", "--deliver", "discard"]
        )
        self.assertIsNot(options["logger"], logfile.twistdLogger)
