"""
The API reference has a page for every public module of txsmtp, each in
the toctree of docs/api.rst, and the page of txsmtp.interfaces names every
interface the module defines (autodoc does not find them by itself).
"""

from __future__ import annotations

import os
import pkgutil
import re

from twisted.trial import unittest
from zope.interface.interface import InterfaceClass

import txsmtp
import txsmtp.interfaces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def publicModules() -> list[str]:
    found = [m.name for m in pkgutil.walk_packages(txsmtp.__path__, "txsmtp.")]
    return ["txsmtp"] + [name for name in found if not any(part.startswith("_") for part in name.split("."))]


class APIPagesTests(unittest.TestCase):
    def test_onePagePerModule(self) -> None:
        with open(os.path.join(ROOT, "docs", "api.rst"), encoding="utf-8") as f:
            listed = set(re.findall(r"^   api/(\S+)$", f.read(), re.M))
        for name in publicModules():
            self.assertIn(name, listed)
            path = os.path.join(ROOT, "docs", "api", name + ".rst")
            with open(path, encoding="utf-8") as f:
                self.assertIn(f".. automodule:: {name}\n", f.read())

    def test_interfaces(self) -> None:
        with open(os.path.join(ROOT, "docs", "api", "txsmtp.interfaces.rst"), encoding="utf-8") as f:
            page = f.read()
        interfaces = [
            name
            for name, value in vars(txsmtp.interfaces).items()
            if isinstance(value, InterfaceClass) and value.__module__ == "txsmtp.interfaces"
        ]
        self.assertTrue(interfaces)
        for name in interfaces:
            self.assertIn(f".. autoclass:: txsmtp.interfaces.{name}()\n   :members:\n", page)
