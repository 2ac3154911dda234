"""When a call is tried again, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from flowsvc.client.errors import FlowsvcError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (each wait is uniform in [0, cap]), so that many
    clients cut off by one server restart do not come back in lockstep.

    `max_attempts` bounds unary calls, and streams that never received an event (a server
    that is not there should be reported soon). A stream that did receive events resumes up to
    `max_stream_attempts` times in a row without progress: enough to ride out a server restart
    (about 30 s with the defaults); every event received starts the count again."""

    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_attempts: int = 6
    max_stream_attempts: int = 12

    def backoff(self, attempt: int) -> float:
        """The wait before retry number `attempt` (1 for the first retry)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


def retry_delay(error: FlowsvcError, policy: RetryPolicy, attempt: int) -> float | None:
    """Seconds to wait before trying a retry-safe call again, or None when it must not be.

    UNAVAILABLE means the call did not reach a server able to serve it (unreachable, starting,
    draining). RESOURCE_EXHAUSTED is retried only when the server says when (RetryInfo): a limit
    without a time to wait is a limit, and hammering it would not help."""
    if attempt >= policy.max_attempts:
        return None
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return policy.backoff(attempt)
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None:
        return max(error.retry_delay.total_seconds(), policy.backoff(attempt))
    return None


def resumable(error: FlowsvcError) -> bool:
    """A stream ended in a way that reconnecting with after_seq continues it: the connection or
    the server went away, or the server cut off a slow reader (it says how to resume)."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "resume with after_seq" in (
        error.message
    )
