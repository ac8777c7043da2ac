"""
The examples of docs/sending.rst run.

Every ``.. code-block:: python`` block of the chapter compiles (snippets
may use ``await`` at top level: they stand for the body of an async
function).  A block that defines ``async def main(reactor)`` is a complete
program: it is run, and when the text after it is ``It prints::``, what it
prints must be that literal block.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import textwrap

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rstExamples(name: str) -> list[tuple[str, str | None]]:
    """The python blocks of docs/NAME, each with the ``It prints::`` block after it (or None)."""
    with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
        text = f.read()
    found = re.findall(
        r"\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)(?:It prints::\n\n((?:(?:    .*)?\n)+))?",
        text,
    )
    return [(textwrap.dedent(code), textwrap.dedent(out) if out else None) for code, out in found]


_SENDING = rstExamples("sending.rst")


class SendingChapterTests(unittest.TestCase):
    """docs/sending.rst."""

    def test_allCompile(self) -> None:
        for code, _ in _SENDING:
            compile(code, "sending.rst", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    def test_programsFound(self) -> None:
        programs = [code for code, _ in _SENDING if "async def main(reactor)" in code]
        self.assertGreaterEqual(len(programs), 6)


def _makeTest(index: int, code: str, expected: str | None):
    async def test(self: unittest.TestCase) -> None:
        from twisted.internet import reactor

        namespace: dict = {"__name__": f"sending_example_{index}"}
        exec(compile(code, f"sending.rst[{index}]", "exec"), namespace)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await namespace["main"](reactor)
        if expected is not None:
            self.assertEqual(out.getvalue().strip(), expected.strip())

    return test


for _i, (_code, _out) in enumerate(_SENDING):
    if "async def main(reactor)" in _code:
        setattr(SendingChapterTests, f"test_program_{_i}", _makeTest(_i, _code, _out))
