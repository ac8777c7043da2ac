"""
Finding the real peers interop tests drive (swaks, smtp-source, ...).

A test asks for a peer with :func:`requirePeer`.  When the peer is missing
the test is skipped, unless ``TXSMTP_REQUIRE_PEERS=1`` is set (as CI does),
in which case it fails: a skipped interop test must never pass for done.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest

__all__ = ["requirePeer", "PEERS_REQUIRED"]

PEERS_REQUIRED = os.environ.get("TXSMTP_REQUIRE_PEERS") == "1"

_EXTRA_PATH = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def requirePeer(name: str) -> str:
    """
    Return the full path of the program ``name``.

    :raise SkipTest: when it is missing and peers are optional.
    :raise AssertionError: when it is missing and ``TXSMTP_REQUIRE_PEERS=1``.
    """
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))
    if path:
        return path
    message = f"interop peer {name!r} is not installed (see .ci/run for how to install it)"
    if PEERS_REQUIRED:
        raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
    raise SkipTest(message)
