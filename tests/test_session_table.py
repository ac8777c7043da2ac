"""
The command/state table of the server session (:mod:`txsmtp.session.table`)
against the RFCs' sequencing rules, and a session driven directly (no
transport) for every (state, verb) pair to show that the table is what the
session does.

- RFC 5321 §4.1.4: MAIL only when no transaction is under way (and after
  EHLO/HELO), RCPT after MAIL, DATA after RCPT; EHLO, HELO, RSET, NOOP,
  QUIT, VRFY and HELP anywhere in the command phase; 503 for a command out
  of sequence.
- RFC 3030 §2: BDAT only in a transaction; DATA and BDAT not mixed.
- RFC 3207 §4: STARTTLS not while BDAT chunks are under way; it resets the
  session to its initial state.
- RFC 4954 §4: AUTH not during a mail transaction.
- RFC 2033 §4.1: LHLO is LMTP's EHLO (and EHLO/HELO are refused there).
"""

from __future__ import annotations

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.trial import unittest

from tests.sessiondriver import Driver, ScriptedDelivery
from txsmtp.auth import makePortal
from txsmtp.errors import SMTPError
from txsmtp.session.table import (
    COMMAND_STATES,
    COMMANDS,
    TRANSACTION_STATES,
    TRANSITIONS,
    State,
)

S = State

#: The rules of the RFCs, written out independently of the table.  The
#: columns are the states in which commands are read as commands.
COLUMNS = [S.INITIAL, S.READY, S.MAIL, S.RCPT, S.BDAT, S.REFUSED]
COMMAND_PHASE = frozenset({S.INITIAL, S.READY, S.MAIL, S.RCPT, S.BDAT})

#: What the session really allows (its replies are not ``503 5.5.1`` for
#: being out of sequence).  BDAT is in the table for every state because its
#: octets must be consumed even when it is refused; its own rule (RFC 3030
#: §2: MAIL first) is checked in the session, with the same 503.
RFC_ALLOWED: dict[str, frozenset[State]] = {
    "EHLO": COMMAND_PHASE,
    "HELO": COMMAND_PHASE,
    "LHLO": COMMAND_PHASE,
    "MAIL": frozenset({S.READY}),
    "RCPT": frozenset({S.MAIL, S.RCPT}),
    "DATA": frozenset({S.MAIL, S.RCPT}),
    "BDAT": frozenset({S.MAIL, S.RCPT, S.BDAT}),
    "RSET": COMMAND_PHASE,
    "NOOP": COMMAND_PHASE,
    "QUIT": COMMAND_PHASE | {S.REFUSED},
    "VRFY": COMMAND_PHASE,
    "EXPN": COMMAND_PHASE,
    "HELP": COMMAND_PHASE,
    "STARTTLS": frozenset({S.INITIAL, S.READY, S.MAIL, S.RCPT}),
    "AUTH": frozenset({S.READY}),
}

#: The table as it should print: ``+`` the session reads the verb there,
#: ``.`` refused with 503 5.5.1 for being out of sequence.  (BDAT's row is
#: ``+`` wherever commands are read: its octets are consumed everywhere, and
#: "MAIL first" is its own rule, also answered 503 5.5.1: see RFC_ALLOWED.)
GRID = """\
verb      initial ready mail rcpt bdat refused
AUTH      .       +     .    .    .    .
BDAT      +       +     +    +    +    .
DATA      .       .     +    +    .    .
EHLO      +       +     +    +    +    .
EXPN      +       +     +    +    +    .
HELO      +       +     +    +    +    .
HELP      +       +     +    +    +    .
LHLO      +       +     +    +    +    .
MAIL      .       +     .    .    .    .
NOOP      +       +     +    +    +    .
QUIT      +       +     +    +    +    +
RCPT      .       .     +    +    .    .
RSET      +       +     +    +    +    .
STARTTLS  +       +     +    +    .    .
VRFY      +       +     +    +    +    .
"""


def formatTable(commands: dict[str, frozenset[State]]) -> str:
    widths = [max(len(s.value), 4) for s in COLUMNS]
    header = "verb      " + " ".join(s.value.ljust(w) for s, w in zip(COLUMNS, widths, strict=True))
    rows = [header.rstrip()]
    for verb in sorted(commands):
        cells = [("+" if s in commands[verb] else ".").ljust(w) for s, w in zip(COLUMNS, widths, strict=True)]
        rows.append((verb.ljust(10) + " ".join(cells)).rstrip())
    return "\n".join(rows) + "\n"


class TableTests(unittest.TestCase):
    def test_printTable(self) -> None:
        """The table, printed (``pytest -s`` shows it), is the one the RFCs give."""
        table = formatTable(COMMANDS)
        print()
        print(table)
        print("transitions:", ", ".join(f"{v}->{s.value}" for v, s in sorted(TRANSITIONS.items())))
        self.assertEqual(table, GRID)

    def test_tableMatchesRFCs(self) -> None:
        """Every built-in verb is in the table, with the states the RFCs allow."""
        self.assertEqual(set(COMMANDS), set(RFC_ALLOWED))
        for verb, states in COMMANDS.items():
            if verb == "BDAT":
                # Consumed everywhere commands are read, refused outside a transaction.
                self.assertEqual(states, COMMAND_PHASE, verb)
                continue
            self.assertEqual(states, RFC_ALLOWED[verb], verb)

    def test_specificRules(self) -> None:
        # RFC 5321 §4.1.4 / §3.3: one transaction at a time.
        self.assertEqual(COMMANDS["MAIL"] & TRANSACTION_STATES, frozenset())
        self.assertNotIn(S.INITIAL, COMMANDS["MAIL"])
        # RCPT and DATA need MAIL.
        self.assertEqual(COMMANDS["RCPT"], frozenset({S.MAIL, S.RCPT}))
        self.assertTrue(COMMANDS["DATA"] <= TRANSACTION_STATES)
        # RFC 3030 §2: no DATA once BDAT has begun.
        self.assertNotIn(S.BDAT, COMMANDS["DATA"])
        # RFC 3207: no STARTTLS while chunks are being sent.
        self.assertNotIn(S.BDAT, COMMANDS["STARTTLS"])
        self.assertIs(TRANSITIONS["STARTTLS"], S.INITIAL)
        # RFC 4954 §4: AUTH not in a transaction.
        self.assertEqual(COMMANDS["AUTH"] & TRANSACTION_STATES, frozenset())
        # Nothing is a command inside DATA or AUTH, or once closed.
        for verb, states in COMMANDS.items():
            self.assertTrue(states <= COMMAND_STATES, verb)
            self.assertFalse(states & {S.DATA, S.AUTH, S.CLOSED}, verb)
        # Only QUIT after the delivery refused the connection.
        self.assertEqual({v for v, s in COMMANDS.items() if S.REFUSED in s}, {"QUIT"})

    def test_transitionsTable(self) -> None:
        self.assertEqual(
            {v: s.value for v, s in TRANSITIONS.items()},
            {"EHLO": "ready", "HELO": "ready", "LHLO": "ready", "MAIL": "mail", "RCPT": "rcpt",
             "DATA": "data", "BDAT": "bdat", "STARTTLS": "initial", "AUTH": "auth", "QUIT": "closed"},
        )  # fmt: skip


# -- the session, driven for every (state, verb) pair -------------------------------------------

#: A valid use of each verb (what follows the line, for BDAT), and the reply
#: it gets where it is allowed.
USES: dict[str, tuple[bytes, set[int]]] = {
    "EHLO": (b"EHLO other.example\r\n", {250}),
    "HELO": (b"HELO other.example\r\n", {250}),
    "MAIL": (b"MAIL FROM:<x@example.com>\r\n", {250}),
    "RCPT": (b"RCPT TO:<y@example.com>\r\n", {250}),
    # In MAIL (no recipient yet), DATA and BDAT are refused by RFC 5321
    # §3.3's own rule: 554 (or 503) "no valid recipients".
    "DATA": (b"DATA\r\n", {354}),
    "BDAT": (b"BDAT 2\r\nab", {250}),
    "RSET": (b"RSET\r\n", {250}),
    "NOOP": (b"NOOP\r\n", {250}),
    "QUIT": (b"QUIT\r\n", {221}),
    "VRFY": (b"VRFY someone@example.com\r\n", {252}),
    "EXPN": (b"EXPN staff\r\n", {502}),
    "HELP": (b"HELP\r\n", {214}),
    "STARTTLS": (b"STARTTLS\r\n", {220}),
    "AUTH": (b"AUTH LOGIN\r\n", {334}),
}

#: How to reach each state from a fresh session.
SETUP: dict[State, bytes] = {
    S.INITIAL: b"",
    S.READY: b"EHLO client.example\r\n",
    S.MAIL: b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n",
    S.RCPT: b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n",
    S.BDAT: b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 3\r\nabc",
    S.DATA: b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
    S.AUTH: b"EHLO client.example\r\nAUTH LOGIN\r\n",
    S.REFUSED: b"",
}


class _Refusing(ScriptedDelivery):
    def openSession(self, connection):
        raise SMTPError(554, "5.7.1", "go away")


def driver(state: State, lmtp: bool = False) -> Driver:
    delivery = _Refusing() if state is S.REFUSED else ScriptedDelivery()
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice", b"secret")
    d = Driver(
        delivery,
        lmtp=lmtp,
        tls=object(),  # any non-None value offers STARTTLS; the driver does no handshake
        portal=makePortal(delivery, [checker]),
        allowInsecureAuth=True,
        maxErrors=1000,
    )
    setup = SETUP[state]
    if lmtp:
        setup = setup.replace(b"EHLO ", b"LHLO ")
    d.feed(setup)
    assert d.session.state is state, (state, d.session.state)
    return d


class SessionFollowsTableTests(unittest.TestCase):
    """Drive a ServerSession into each state and send each verb."""

    def check(self, state: State, verb: str, lmtp: bool = False) -> None:
        d = driver(state, lmtp)
        use, okCodes = USES.get(verb, (b"LHLO other.example\r\n", {250}))
        if lmtp:
            use = use.replace(b"EHLO ", b"LHLO ")
        before = d.session.state
        replies = d.feed(use)
        where = f"{verb} in {state.value}{' (LMTP)' if lmtp else ''}: {replies}"
        self.assertEqual(len(replies), 1, where)
        [r] = replies
        if state not in RFC_ALLOWED[verb]:
            # Out of sequence: 503 5.5.1, and nothing changes.
            self.assertEqual((r.code, r.enhanced), (503, "5.5.1"), where)
            self.assertIs(d.session.state, before, where)
            if verb == "BDAT" and state is not S.REFUSED:
                # Its octets were consumed: the next command is read where the client put it.
                # (In a refused session they are not: only QUIT is read there, and the
                # octets are refused as lines like any other; see test_bdatInRefusedSession.)
                self.assertEqual([x.code for x in d.feed(b"NOOP\r\n")], [250], where)
            return
        if verb in ("DATA", "BDAT") and state is S.MAIL:
            # RFC 5321 §3.3: no recipient yet.
            self.assertIn(r.code, (503, 554), where)
            self.assertEqual(r.enhanced, "5.5.1", where)
            self.assertIs(d.session.state, S.MAIL, where)
            return
        self.assertIn(r.code, okCodes, where)
        self.assertNotEqual((r.code, r.enhanced), (503, "5.5.1"), where)
        after = d.session.state
        if verb == "RSET":
            self.assertIs(after, S.READY if before in TRANSACTION_STATES else before, where)
        else:
            self.assertIs(after, TRANSITIONS.get(verb, before), where)

    def test_everyPair(self) -> None:
        for state in COLUMNS:
            for verb in USES:
                with self.subTest(state=state, verb=verb):
                    self.check(state, verb)

    def test_everyPairLMTP(self) -> None:
        """LMTP: the same table, with LHLO where SMTP has EHLO."""
        for state in COLUMNS:
            for verb in [*USES, "LHLO"]:
                if verb in ("EHLO", "HELO"):
                    continue
                with self.subTest(state=state, verb=verb):
                    self.check(state, verb, lmtp=True)

    def test_ehloRefusedUnderLMTP(self) -> None:
        """RFC 2033 §4.1: EHLO and HELO are not LMTP (500, in every state)."""
        for state in COLUMNS[:-1]:
            for line in (b"EHLO x.example", b"HELO x.example"):
                d = driver(state, lmtp=True)
                r = d.command(line)
                self.assertEqual((r.code, r.enhanced), (500, "5.5.1"), (state, line))
                self.assertIs(d.session.state, state)

    def test_bdatInRefusedSession(self) -> None:
        """
        After the delivery refused the connection, BDAT is refused before its
        own rule runs, so its octets are read as lines (each refused); a QUIT
        among them still ends the session.  Nothing can be delivered.
        """
        d = driver(S.REFUSED)
        replies = d.feed(b"BDAT 6\r\nQUIT\r\n")
        self.assertEqual([(r.code, r.enhanced) for r in replies], [(503, "5.5.1"), (221, "2.0.0")])
        self.assertTrue(d.closed)
        self.assertEqual(d.delivery.stored, [])

    def test_lhloUnknownOverSMTP(self) -> None:
        d = driver(S.READY)
        self.assertEqual(d.command(b"LHLO x.example").code, 500)

    def test_nothingIsACommandInData(self) -> None:
        """After 354, a verb is message text: no reply until the final dot."""
        for verb, (use, _) in USES.items():
            d = driver(S.DATA)
            self.assertEqual(d.feed(use), [], verb)
            self.assertIs(d.session.state, S.DATA, verb)
            replies = d.feed(b"\r\n.\r\n")
            self.assertEqual([r.code for r in replies], [250], verb)

    def test_nothingIsACommandInAuth(self) -> None:
        """Inside AUTH a line is a SASL response: never the verb's own reply."""
        for verb, (use, _) in USES.items():
            d = driver(S.AUTH)
            replies = d.feed(use.split(b"\r\n")[0] + b"\r\n")
            self.assertEqual(len(replies), 1, verb)
            # LOGIN asks for the password (the line was valid base64), or the
            # exchange fails on bad base64: 501 5.5.2.
            self.assertIn((replies[0].code, replies[0].enhanced), {(334, None), (501, "5.5.2")}, verb)
            self.assertIn(d.session.state, (S.AUTH, S.READY), verb)

    def test_nothingAfterQuit(self) -> None:
        d = driver(S.READY)
        self.assertEqual(d.command(b"QUIT").code, 221)
        self.assertIs(d.session.state, S.CLOSED)
        self.assertTrue(d.closed)
        for verb, (use, _) in USES.items():
            self.assertEqual(d.feed(use), [], verb)
        self.assertIs(d.session.state, S.CLOSED)

    def test_startTLSResets(self) -> None:
        """RFC 3207 §4.2: after STARTTLS the client must EHLO again; the transaction is gone."""
        d = driver(S.RCPT)
        replies = d.feed(b"STARTTLS\r\n")
        self.assertEqual([r.code for r in replies], [220])
        self.assertEqual(d.startTLS, 1)
        self.assertIs(d.session.state, S.INITIAL)
        self.assertIsNone(d.session.transaction)
        self.assertIsNone(d.session.connection.heloName)
        self.assertEqual(d.delivery.sessions[0].resets, 1)
        r = d.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual((r.code, r.enhanced), (503, "5.5.1"))

    def test_dataAndBdatNotMixed(self) -> None:
        """RFC 3030 §2: DATA after BDAT is 503 and the BDAT transaction goes on."""
        d = driver(S.BDAT)
        r = d.command(b"DATA")
        self.assertEqual((r.code, r.enhanced), (503, "5.5.1"))
        self.assertEqual([x.code for x in d.feed(b"BDAT 2 LAST\r\nde")], [250])
        [(_, stored)] = d.delivery.stored
        self.assertTrue(stored.endswith(b"\r\nabcde"))
