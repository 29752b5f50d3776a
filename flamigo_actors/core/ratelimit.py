"""Token buckets: per-connection request limits and per-address connection limits."""

from __future__ import annotations

import time

__all__ = ["AddressLimiter", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`take` spends one.

    Args:
        rate: tokens added per second.
        burst: bucket size; ``None`` means twice the rate (at least 1).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, 2 * rate))
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend a token; False when the bucket is empty (the caller is over the limit)."""
        now = time.monotonic()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def idle_since(self) -> float:
        """``time.monotonic()`` of the last :meth:`take`."""
        return self.stamp


class AddressLimiter:
    """One :class:`TokenBucket` per remote address, forgetting idle addresses."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, address: str) -> bool:
        """Whether ``address`` may open one more connection now."""
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self.rate, self.burst)
        return bucket.take()

    def prune(self, idle: float = 60.0) -> None:
        """Forget addresses not seen for ``idle`` seconds (bounded memory)."""
        cutoff = time.monotonic() - idle
        for address in [a for a, b in self._buckets.items() if b.idle_since() < cutoff]:
            del self._buckets[address]

    def __len__(self) -> int:
        return len(self._buckets)
