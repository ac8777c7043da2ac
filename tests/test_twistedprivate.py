"""
Pins every private name of Twisted that txsmtp relies on
(:mod:`txsmtp._twistedprivate`), and the public replacements used instead
of private ones elsewhere (``twistd smtp``'s listeners and its reading of
endpoint descriptions).  A Twisted release that changes one of them fails
here, by name.
"""

from __future__ import annotations

import socket
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.application import strports
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.testing import StringTransport
from twisted.protocols import haproxy
from twisted.protocols.policies import ProtocolWrapper
from twisted.trial import unittest
from zope.interface import implementer

from txsmtp import _twistedprivate as private
from txsmtp._io import canWriteDirectly, writeNow
from txsmtp.server import SMTPFactory
from txsmtp.tap import SMTPService, _descriptionParts
from txsmtp.testing import MemoryDelivery


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.ready: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class TCPWriteStateTests(unittest.TestCase):
    """tcp.Connection's dataBuffer, _tempDataLen and _writeDisconnected, on a real loopback connection."""

    async def connection(self) -> Any:
        server = _Collect()
        factory: Any = protocol.Factory.forProtocol(lambda: server)
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = _Collect()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoints.connectProtocol(endpoint, client)
        await server.ready
        self.addCleanup(client.transport.loseConnection)  # type: ignore[union-attr]
        return client.transport, server

    async def test_names(self) -> None:
        transport, _ = await self.connection()
        for name in private.TCP_WRITE_STATE:
            self.assertTrue(hasattr(transport, name), name)
        self.assertTrue(private.hasTCPWriteState(transport))
        self.assertTrue(canWriteDirectly(transport))
        self.assertFalse(private.hasTCPWriteState(StringTransport()))
        self.assertFalse(canWriteDirectly(StringTransport()))

    async def test_queuedBytes(self) -> None:
        """Nothing queued on a fresh connection; write() queues until the reactor sends."""
        transport, server = await self.connection()
        self.assertFalse(private.queuedBytes(transport))
        transport.write(b"queued")
        self.assertTrue(private.queuedBytes(transport))
        # writeNow must not jump that queue: its bytes come after.
        writeNow(transport, b" then now")
        while server.data != b"queued then now":
            await _turn()
        self.assertFalse(private.queuedBytes(transport))

    async def test_writeShutDown(self) -> None:
        transport, _ = await self.connection()
        self.assertFalse(private.writeShutDown(transport))
        transport.loseWriteConnection()
        while not private.writeShutDown(transport):
            await _turn()


def _turn() -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, d.callback, None)  # type: ignore[attr-defined]
    return d


@implementer(endpoints.interfaces.IStreamServerEndpoint)
class _RecordingEndpoint:
    def __init__(self) -> None:
        self.factory: Any = None

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        self.factory = factory
        return defer.succeed(None)


class HAProxyWrapperTests(unittest.TestCase):
    """twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper and its _proxyInfo."""

    def wrapper(self) -> Any:
        inner = _RecordingEndpoint()
        haproxy.proxyEndpoint(inner).listen(protocol.Factory.forProtocol(_Collect))
        wrapper = inner.factory.buildProtocol(None)
        wrapper.makeConnection(StringTransport())
        return wrapper

    def test_publicEndpointBuildsThePrivateWrapper(self) -> None:
        """What proxyEndpoint (public) builds is the class txsmtp looks for, a ProtocolWrapper."""
        wrapper = self.wrapper()
        self.assertIsInstance(wrapper, private.HAProxyProtocolWrapper)
        self.assertIsInstance(wrapper, ProtocolWrapper)

    def test_proxyInfo(self) -> None:
        """None until the header is in; then its source address; LOCAL has no source."""
        wrapper = self.wrapper()
        self.assertIsNone(private.proxyInfo(wrapper))
        wrapper.dataReceived(b"PROXY TCP4 192.0.2.1 ")
        self.assertIsNone(private.proxyInfo(wrapper))
        wrapper.dataReceived(b"198.51.100.2 40000 25\r\nEHLO x\r\n")
        info = private.proxyInfo(wrapper)
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.1", 40000))
        self.assertEqual(wrapper.wrappedProtocol.data, b"EHLO x\r\n")
        local = self.wrapper()
        local.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
        self.assertIsNotNone(private.proxyInfo(local))
        self.assertIsNone(private.proxyInfo(local).source)


class ListenerTests(unittest.TestCase):
    """twistd smtp's listeners come from strports.service (public), which raises when it cannot listen."""

    def test_raisesAtStart(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            service = SMTPService(SMTPFactory(MemoryDelivery(), "mx.invalid"), [f"tcp:{port}:interface=127.0.0.1"])
            self.assertRaises(CannotListenError, service.startService)
        self.assertTrue(hasattr(strports, "service"))


# Descriptions made of the characters that matter to the syntax.
_descriptions = st.text(alphabet=st.sampled_from(list("ab1:=\\.")), max_size=30)


class DescriptionPartsTests(unittest.TestCase):
    """tap._descriptionParts reads descriptions as Twisted's private endpoints._parse does."""

    def test_examples(self) -> None:
        self.assertEqual(_descriptionParts("tcp6:24:interface=\\:\\:1"), (["tcp6", "24"], {"interface": "::1"}))
        self.assertEqual(_descriptionParts("unix:"), (["unix", ""], {}))
        self.assertEqual(_descriptionParts("tcp:25:interface=a=b"), (["tcp", "25"], {"interface": "a=b"}))

    @given(_descriptions)
    def test_agreesWithTwisted(self, description: str) -> None:
        parse = getattr(endpoints, "_parse", None)
        if parse is None:  # pragma: no cover - Twisted dropped it: nothing left to agree with
            return
        try:
            args, kwargs = parse(description)
        except Exception:
            return  # serverFromString refuses it before tap reads it
        self.assertEqual(_descriptionParts(description), (list(args), kwargs))
