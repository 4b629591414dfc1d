"""The keeper's grace clock: how long a kernel is kept with no client attached.

Monotonic, so a suspended host does not end kernels early; the proxy's give-up clock is the wall
clock (supervisor.py), so a suspended laptop counts its sleep as the remote does.

Part of the remote agent (see bootstrap.py): standard library only, Python >= 3.8.
"""
from __future__ import annotations

FIRST_CLIENT_WAIT = 30.0  # for the session that started us to connect and hear a start error


class GraceClock:
    """``grace`` seconds (None: for ever) from the moment the last client left.

    Until the starting session connects (at once, normally) a grace period runs too: at least
    FIRST_CLIENT_WAIT, so a start error can still be told.
    """

    def __init__(self, grace: "float | None", now: float) -> None:
        self.grace = grace
        first = FIRST_CLIENT_WAIT if grace is None else max(grace, FIRST_CLIENT_WAIT)
        self.deadline = now + first  # type: float | None

    def expired(self, now: float, *, attached: bool, note) -> bool:
        """Whether the kernel has been without a client for too long; ``note`` logs a start."""
        if attached:
            self.deadline = None
            return False
        if self.deadline is None:
            if self.grace is None:
                return False
            self.deadline = now + self.grace
            note("no proxy attached; the kernel is kept for %s" % describe_grace(self.grace))
            return False
        return now >= self.deadline


def describe_grace(grace: "float | None") -> str:
    if grace is None:
        return "ever (no grace limit)"
    if grace >= 120:
        return "%g min" % (grace / 60)
    return "%g s" % grace
