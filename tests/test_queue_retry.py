"""
The retry schedule (txsmtp.queue.retry): Postfix's defaults, a delay that
grows with the message's age between the two bounds, jitter that never
crosses them, the last attempt at the end of the lifetime, and expiry.
"""

from __future__ import annotations

from twisted.trial import unittest

from txsmtp.queue.retry import RetryPolicy

T0 = 1_800_000_000.0


class RetryPolicyTests(unittest.TestCase):
    def test_postfixDefaults(self) -> None:
        policy = RetryPolicy()
        self.assertEqual((policy.minimum, policy.maximum, policy.lifetime), (300, 4000, 5 * 86400))
        self.assertEqual(policy.jitter, 0.1)

    def test_delayIsAgeClamped(self) -> None:
        """Without jitter, the delay is the message's age, clamped to [minimum, maximum]."""
        policy = RetryPolicy(jitter=0)
        self.assertEqual(policy.delay(T0, T0), 300)
        self.assertEqual(policy.delay(T0, T0 + 10), 300)
        self.assertEqual(policy.delay(T0, T0 + 1000), 1000)
        self.assertEqual(policy.delay(T0, T0 + 3999), 3999)
        self.assertEqual(policy.delay(T0, T0 + 86400), 4000)
        # A clock that went backwards does not make it shorter than the minimum.
        self.assertEqual(policy.delay(T0, T0 - 50), 300)

    def test_jitter(self) -> None:
        """Jitter moves the delay by up to its fraction either way, within the bounds."""
        low = RetryPolicy(jitter=0.1, random=lambda: 0.0)
        high = RetryPolicy(jitter=0.1, random=lambda: 0.999999)
        self.assertAlmostEqual(low.delay(T0, T0 + 1000), 900)
        self.assertAlmostEqual(high.delay(T0, T0 + 1000), 1100, places=2)
        # Never below the minimum, never above the maximum.
        self.assertEqual(low.delay(T0, T0), 300)
        self.assertAlmostEqual(high.delay(T0, T0), 330, places=2)
        self.assertAlmostEqual(low.delay(T0, T0 + 86400), 3600)
        self.assertEqual(high.delay(T0, T0 + 86400), 4000)

    def test_jitterSpreads(self) -> None:
        """With the real random function, delays of messages deferred together differ."""
        policy = RetryPolicy()
        delays = {policy.delay(T0, T0 + 2000) for _ in range(50)}
        self.assertGreater(len(delays), 10)
        self.assertTrue(all(1800 <= d <= 2200 for d in delays))

    def test_nextAttempt(self) -> None:
        policy = RetryPolicy(jitter=0)
        self.assertEqual(policy.nextAttempt(T0, T0), T0 + 300)
        self.assertEqual(policy.nextAttempt(T0, T0 + 1000), T0 + 2000)

    def test_lastAttemptAtExpiry(self) -> None:
        """The next attempt is never later than the end of the lifetime."""
        policy = RetryPolicy(jitter=0)
        end = T0 + 5 * 86400
        self.assertEqual(policy.nextAttempt(T0, end - 100), end)
        self.assertEqual(policy.expiry(T0), end)
        self.assertFalse(policy.expired(T0, end - 0.001))
        self.assertTrue(policy.expired(T0, end))

    def test_schedule(self) -> None:
        """Postfix's schedule: 300 s apart, then doubling with the age, then every 4000 s until 5 days."""
        policy = RetryPolicy(jitter=0)
        now, times = T0, []
        while not policy.expired(T0, now):
            now = policy.nextAttempt(T0, now)
            times.append(now - T0)
        self.assertEqual(times[:6], [300, 600, 1200, 2400, 4800, 8800])
        self.assertEqual(times[-1], 5 * 86400)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        self.assertTrue(all(300 <= g <= 4000 for g in gaps))
        self.assertEqual(len(times), 112)

    def test_shortValuesAccepted(self) -> None:
        """Values down to one second are accepted (tests of a whole server use them)."""
        policy = RetryPolicy(minimum=1, maximum=1, lifetime=1, jitter=0)
        self.assertEqual(policy.delay(T0, T0 + 100), 1)
        self.assertTrue(policy.expired(T0, T0 + 1))

    def test_badValues(self) -> None:
        for kwargs in (
            {"minimum": 0.5},
            {"minimum": 300, "maximum": 200},
            {"lifetime": 0},
            {"jitter": 1.0},
            {"jitter": -0.1},
        ):
            with self.assertRaises(ValueError) as e:
                RetryPolicy(**kwargs)  # type: ignore[arg-type]
            self.assertTrue(str(e.exception).endswith("."))

    def test_repr(self) -> None:
        self.assertEqual(repr(RetryPolicy()), "RetryPolicy(minimum=300, maximum=4000, lifetime=432000, jitter=0.1)")
