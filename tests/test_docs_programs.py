"""
The programs in docs/sending.rst and docs/extensions.rst run.

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


class _ChapterTests:
    """Mixed into a TestCase per chapter (so trial does not collect it alone)."""

    chapter = ""
    minimumPrograms = 1

    def examples(self) -> list[tuple[str, str | None]]:
        return rstExamples(self.chapter)

    def test_allCompile(self) -> None:
        for code, _ in self.examples():
            compile(code, self.chapter, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    def test_programsFound(self) -> None:
        programs = [code for code, _ in self.examples() if "async def main(reactor)" in code]
        self.assertGreaterEqual(len(programs), self.minimumPrograms)


def _makeTest(chapter: str, index: int, code: str, expected: str | None):
    async def test(self: unittest.TestCase) -> None:
        from twisted.internet import reactor

        namespace: dict = {"__name__": f"docs_example_{index}"}
        exec(compile(code, f"{chapter}[{index}]", "exec"), namespace)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await namespace["main"](reactor)
        if expected is not None:
            self.assertEqual(out.getvalue().strip(), expected.strip())

    return test


def _chapter(name: str, chapter: str, minimumPrograms: int) -> type:
    cls = type(name, (_ChapterTests, unittest.TestCase), {"chapter": chapter, "minimumPrograms": minimumPrograms})
    for i, (code, out) in enumerate(rstExamples(chapter)):
        if "async def main(reactor)" in code:
            setattr(cls, f"test_program_{i}", _makeTest(chapter, i, code, out))
    return cls


SendingChapterTests = _chapter("SendingChapterTests", "sending.rst", 6)
ExtensionsChapterTests = _chapter("ExtensionsChapterTests", "extensions.rst", 1)
