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

# Every cross-reference must resolve (CI builds with -n -W).  References to
# other projects cannot: intersphinx would need Twisted's and Python's
# objects.inv, and the build machines have no network access to fetch them.
# So targets outside txsmtp are not checked, and render as code without a
# link.  The third pattern is Twisted and zope names as annotations spell
# them short; the last is not targets at all but pieces of type
# annotations as autodoc prints them (a zope interface is an object, not a
# class: ``<InterfaceClass ...>``; ``tuple[str`` is half of a generic).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(twisted|zope|OpenSSL|cryptography|service_identity)(\..*)?"),
    (r"py:.*", r"(collections\.abc|typing|smtplib|random|email|os|io|ssl|socket|asyncio)(\..*)?"),
    (r"py:class", r"(defer\.)?Deferred|Interface|Failure|IReactorTime|IAddress"),
    (r"py:class", r".*<InterfaceClass .*|(tuple|dict|list|type)\[.*"),
]

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


def _findObject(dotted):
    """The object a dotted name names, importing modules as needed, or None."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _assignedIn(cls, name):
    """Whether instances of ``cls`` get an attribute ``name`` (``self.name = ...``)."""
    import re

    for klass in getattr(cls, "__mro__", ()):
        if not (klass.__module__ or "").startswith("txsmtp"):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(r"self\." + re.escape(name) + r"\b|^\s+" + re.escape(name) + r"\s*[:=]", source, re.M):
            return True
    return False


def _resolveOwn(app, env, node, contnode):
    """
    Resolve a reference to a txsmtp name that Sphinx could not resolve.

    Three cases, tried with the module and class the reference was written
    in, then among txsmtp's modules:

    - a name re-exported elsewhere (``txsmtp.SMTPError`` is
      ``txsmtp.errors.SMTPError``): link to where it is documented;
    - a real txsmtp object that has no entry of its own (an instance
      attribute, an inherited or private method, a class outside
      ``__all__``): keep the text, as code, without a link;
    - anything else (a typo, a renamed method) stays a warning.
    """
    import sys

    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module and cls:
        candidates.append(f"{module}.{cls}.{target}")
    if module:
        candidates.append(f"{module}.{target}")
    candidates += [f"{name}.{target}" for name in sorted(sys.modules) if name.startswith("txsmtp")]
    domain = env.get_domain("py")
    for candidate in candidates:
        if not candidate.startswith("txsmtp"):
            continue
        head, _, attr = candidate.rpartition(".")
        owner = _findObject(head)
        if owner is None:
            continue
        obj = getattr(owner, attr, None)
        if obj is None:
            if not (inspect.isclass(owner) and _assignedIn(owner, attr)):
                continue
            return contnode
        names = [candidate]
        if getattr(obj, "__module__", None) and getattr(obj, "__qualname__", None):
            names.insert(0, f"{obj.__module__}.{obj.__qualname__}")
        if inspect.isclass(owner) and attr not in vars(owner):
            for klass in owner.__mro__:
                if attr in vars(klass):
                    names.append(f"{klass.__module__}.{klass.__qualname__}.{attr}")
                    break
        for name in names:
            if name in domain.objects:
                from sphinx.util.nodes import make_refnode

                entry = domain.objects[name]
                return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)
        return contnode
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _interfaceMembers)
    app.connect("missing-reference", _resolveOwn)
