"""
The command table of one kind of session: each verb, spelled as clients
send it, mapped to its handler and the states in which it is allowed.

Built once per protocol class (and kept), from the built-in commands of
:mod:`txsmtp.session.core` with their states from
:data:`txsmtp.session.table.COMMANDS`, and the protocol's own ``do_VERB``
methods with their states from its ``allowedStates``.  A protocol method
named like a built-in command replaces the built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from txsmtp.session.table import COMMANDS, State

__all__ = ["CommandTable", "Handler"]

#: ``handler(session, verb, argument)``
Handler = Callable[[Any, str, bytes], None]

Entry = tuple[str, Handler, "frozenset[State] | None"]


class CommandTable:
    """
    :ivar dispatch: the verb as bytes (upper and lower case) to
        ``(verb, handler, states)``; ``states`` ``None`` means any state in
        which commands are read.
    :ivar names: the verbs this session offers (for HELP).
    :ivar lmtp: whether this is an LMTP session (RFC 2033).
    """

    __slots__ = ("dispatch", "names", "lmtp")

    def __init__(
        self,
        builtin: Mapping[str, Handler],
        extra: Mapping[str, frozenset[State] | None],
        extraHandler: Handler,
        lmtp: bool,
    ) -> None:
        self.lmtp = lmtp
        entries: dict[str, Entry] = {}
        for verb, handler in builtin.items():
            if verb == "LHLO" and not lmtp:
                continue
            entries[verb] = (verb, handler, COMMANDS[verb])
        for verb, states in extra.items():
            if states is None:
                states = COMMANDS.get(verb)
            entries[verb] = (verb, extraHandler, states)
        self.dispatch: dict[bytes, Entry] = {}
        for verb, entry in entries.items():
            self.dispatch[verb.encode("ascii")] = entry
            self.dispatch[verb.lower().encode("ascii")] = entry
        hidden = {"EHLO", "HELO"} if lmtp else set()
        self.names = frozenset(v for v in entries if v not in hidden)
