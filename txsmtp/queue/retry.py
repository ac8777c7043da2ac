"""
When to try a deferred recipient again, and when to give up.

:class:`RetryPolicy` follows Postfix: the delay before the next attempt is
the message's age (so that the attempts thin out as it waits), clamped
between ``minimum`` (``minimal_backoff_time``, 300 s) and ``maximum``
(``maximal_backoff_time``, 4000 s); after ``lifetime``
(``maximal_queue_lifetime``, 5 days) the recipient is bounced.  A little
random jitter spreads the retries of messages that were deferred together
(a destination that was down for everyone), so that they do not all come
back in the same second.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

from txsmtp.queue.model import AttemptResult, QueuedRecipient, RecipientOutcome, Result

__all__ = ["RetryPolicy", "outcomeFor", "DEFAULT_MINIMUM", "DEFAULT_MAXIMUM", "DEFAULT_LIFETIME"]

#: Postfix's ``minimal_backoff_time``, in seconds.
DEFAULT_MINIMUM = 300.0
#: Postfix's ``maximal_backoff_time``, in seconds.
DEFAULT_MAXIMUM = 4000.0
#: Postfix's ``maximal_queue_lifetime`` (5 days), in seconds.
DEFAULT_LIFETIME = 5 * 86400.0


class RetryPolicy:
    """
    The retry schedule of the queue.

    :param minimum: the shortest delay between two attempts, in seconds
        (at least 1: tests of a whole server use short ones).
    :param maximum: the longest delay, in seconds (at least ``minimum``).
    :param lifetime: how long a message may stay in the queue, in seconds
        (at least 1); a recipient still deferred after that is bounced.
    :param jitter: the fraction (from 0 to below 1) by which a delay may be
        made longer or shorter at random; the result stays within
        ``[minimum, maximum]``.
    :param random: a function returning a float in ``[0, 1)`` (tests pass a
        constant one).
    :raise ValueError: for values outside these ranges.
    """

    def __init__(
        self,
        minimum: float = DEFAULT_MINIMUM,
        maximum: float = DEFAULT_MAXIMUM,
        lifetime: float = DEFAULT_LIFETIME,
        jitter: float = 0.1,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not minimum >= 1:
            raise ValueError(f"The shortest retry delay must be at least 1 second, not {minimum!r}.")
        if not maximum >= minimum:
            raise ValueError(
                f"The longest retry delay ({maximum!r} s) must not be shorter than the shortest ({minimum!r} s)."
            )
        if not lifetime >= 1:
            raise ValueError(f"The queue lifetime must be at least 1 second, not {lifetime!r}.")
        if not 0 <= jitter < 1:
            raise ValueError(f"The retry jitter must be a fraction from 0 to below 1, not {jitter!r}.")
        self.minimum = float(minimum)
        self.maximum = float(maximum)
        self.lifetime = float(lifetime)
        self.jitter = float(jitter)
        self._random = random

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(minimum={self.minimum:g}, maximum={self.maximum:g}, "
            f"lifetime={self.lifetime:g}, jitter={self.jitter:g})"
        )

    def delay(self, arrival: float, now: float) -> float:
        """
        The delay before the next attempt of a message that arrived at
        ``arrival``, deferred at ``now``: its age clamped to ``[minimum,
        maximum]``, changed by up to ``jitter`` either way, and clamped
        again (so that the bounds are never crossed).
        """
        age = max(now - arrival, 0.0)
        base = min(max(age, self.minimum), self.maximum)
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * self._random() - 1.0)
        return min(max(base, self.minimum), self.maximum)

    def nextAttempt(self, arrival: float, now: float) -> float:
        """
        When to try again (a timestamp): ``now`` plus :meth:`delay`, but not
        later than the end of the message's lifetime, so that the last
        attempt is made when it ends rather than up to ``maximum`` after.
        """
        due = now + self.delay(arrival, now)
        end = arrival + self.lifetime
        if now < end:
            due = min(due, end)
        return due

    def expired(self, arrival: float, now: float) -> bool:
        """Whether a message that arrived at ``arrival`` has outlived the lifetime at ``now``."""
        return now - arrival >= self.lifetime

    def expiry(self, arrival: float) -> float:
        """When a message that arrived at ``arrival`` expires (a timestamp)."""
        return arrival + self.lifetime


def outcomeFor(
    retry: RetryPolicy,
    delayWarning: float | None,
    arrival: float,
    rcpt: QueuedRecipient,
    result: AttemptResult,
    now: float,
) -> tuple[RecipientOutcome, AttemptResult | None]:
    """
    What to record for one attempt's result, and the result to report
    (``None``: nothing to report): a final result as it is; a temporary
    failure deferred to the policy's next attempt, or bounced with
    ``4.4.7`` once the message is older than its lifetime.

    :param delayWarning: the age after which one delay report is due for
        a recipient still deferred (``None``: never, or no reports at all).
    :param arrival: when the message arrived.
    :param rcpt: the recipient tried.
    :param now: the time of the result.
    """
    if result.result != Result.DEFERRED:
        return RecipientOutcome(rcpt.index, result.result), result
    if retry.expired(arrival, now):
        days = retry.lifetime / 86400
        age = f"{days:g} days" if days >= 1 else f"{retry.lifetime:g} seconds"
        expired = AttemptResult(
            Result.FAILED,
            "4.4.7",
            diagnostic=result.diagnostic,
            remoteMTA=result.remoteMTA,
            reason=f"message was too long in the queue (more than {age}); last error: {result.reason}",
        )
        return RecipientOutcome(rcpt.index, Result.FAILED), expired
    warn = delayWarning is not None and not rcpt.delayReported and now - arrival >= delayWarning
    outcome = RecipientOutcome(
        rcpt.index,
        Result.DEFERRED,
        nextAttempt=retry.nextAttempt(arrival, now),
        lastError=result.reason or result.diagnostic or result.status,
        delayReported=rcpt.delayReported or warn,
    )
    return outcome, (result if warn else None)
