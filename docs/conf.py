"""Sphinx configuration for the txsmtp documentation."""

import ast
import inspect
import os
import sys

# autodoc documents the checkout this file lives in, not an installed copy.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)


def _readVersion():
    """
    Read __version__ from txsmtp/__init__.py without importing the package.
    """
    with open(os.path.join(ROOT, "txsmtp", "__init__.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "__version__":
                    return ast.literal_eval(node.value)
    raise RuntimeError("txsmtp.__version__ not found")


project = "txsmtp"
author = "The txsmtp developers"
copyright = "the txsmtp developers"
release = _readVersion()
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False

autodoc_member_order = "bysource"

html_theme = "alabaster"
html_theme_options = {
    "description": "SMTP and ESMTP for Twisted",
}


def _interfaceMembers(app, what, name, obj, options, lines):
    """
    Append the methods and attributes of a zope interface to its docstring.

    autodoc finds a class's members with ``dir()``, which does not show what
    a :class:`zope.interface.Interface` declares, and no zope extension is
    installed: ``.. autoclass:: txsmtp.interfaces.IDelivery()`` in the API
    pages therefore gets its members from here, as nested ``py:method`` and
    ``py:attribute`` directives, in the order of the source.
    """
    from zope.interface.interface import InterfaceClass, Method

    if what != "class" or not isinstance(obj, InterfaceClass):
        return
    # The interface's own names, in the order of its class body.
    for memberName, description in obj.namesAndDescriptions(all=False):
        if isinstance(description, Method):
            lines += ["", f".. py:method:: {memberName}{description.getSignatureString()}", ""]
        else:
            lines += ["", f".. py:attribute:: {memberName}", ""]
        doc = description.getDoc() or ""
        lines += ["   " + line if line.strip() else "" for line in inspect.cleandoc(doc).splitlines()]


def setup(app):
    app.connect("autodoc-process-docstring", _interfaceMembers)
