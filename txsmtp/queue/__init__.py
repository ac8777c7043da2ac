"""
The relay queue: what joins the server to the client.

- :mod:`txsmtp.queue.model`: the data (messages, recipients, leases, next
  hops, results);
- :mod:`txsmtp.queue.interfaces`: the store and outbound interfaces;
- :mod:`txsmtp.queue.sqlite`: the store for one machine;
- :mod:`txsmtp.queue.scheduler`, :mod:`txsmtp.queue.retry`: when to try;
- :mod:`txsmtp.queue.routing`, :mod:`txsmtp.queue.outbound`: where and how;
- :mod:`txsmtp.queue.reports`: delivery status notifications (RFC 3464);
- :mod:`txsmtp.queue.relay`: the server side (relay policy, enqueueing).
"""

from txsmtp.queue.errors import QueueError, QueueFullError, QueueLockedError
from txsmtp.queue.model import (
    AttemptResult,
    Lease,
    NextHop,
    QueuedMessage,
    QueuedRecipient,
    RecipientOutcome,
    RecipientState,
    Result,
)

__all__ = [
    "AttemptResult",
    "Lease",
    "NextHop",
    "QueueError",
    "QueueFullError",
    "QueueLockedError",
    "QueuedMessage",
    "QueuedRecipient",
    "RecipientOutcome",
    "RecipientState",
    "Result",
]
