"""Basic authentication for the web endpoint (basic_auth_users of --web.config.file).

bcrypt is slow by design (tens of milliseconds at cost 10, far more on a busy
machine), so three rules keep it from becoming anybody else's wait:

- A client whose credentials were verified is let in from memory, on the event
  loop, without touching the bcrypt queue: an authorised Prometheus never
  waits behind a flood of wrong passwords. Each use extends the memory by
  REMEMBER seconds; a reload that changes the user's hash forgets it.
- bcrypt runs off the event loop, CONCURRENCY at a time.
- Failed logins buy a bounded amount of bcrypt work: each check takes a token
  from a bucket of its user name (all unknown names share one bucket and are
  checked against a dummy hash, so a wrong name costs what a wrong password
  costs) and from one overall bucket; a success gives its tokens back. With a
  bucket empty the answer is 429 with Retry-After and no bcrypt runs. The same
  wrong credentials again within FORGET_FAILED seconds are refused from memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import bcrypt

from .webconfig import WebConfig

log = logging.getLogger("exporter.web")

CONCURRENCY = 2
REMEMBER = 300.0  # seconds a verified pair is let in from memory, from its last use
FORGET_FAILED = 60.0  # seconds the same wrong pair is refused without bcrypt
MEMORY = 4096  # entries in each of the two memories, oldest dropped first
# Token buckets: (capacity, refill per second).
PER_USER_BUDGET = (5, 0.2)
OVERALL_BUDGET = (10, 1.0)
BUDGET_LOG_EVERY = 60.0  # seconds between warnings about one exhausted bucket
# A bcrypt hash of a random string, checked when the user name is unknown.
DUMMY_HASH = b"$2b$10$CwTycUXWue0Thq9StjUM0uJ8.uNZtMZ8Eg0KKUd7bS9v9Hlb3h6ya"
UNKNOWN_USER = ""  # the bucket all unknown names share (configured names are never empty)


@dataclass
class _Bucket:
    capacity: float
    rate: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        """Seconds until a token is there (0: one is)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class Verdict:
    ok: bool
    retry_after: float = 0.0  # > 0: refused without a check, the failure budget is spent


class BasicAuth:
    def __init__(self, config: WebConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._semaphore = asyncio.Semaphore(CONCURRENCY)
        # sha256(user, password) -> (expiry, the hash it was verified against)
        self._verified: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._failed: OrderedDict[bytes, tuple[float, bytes | None]] = OrderedDict()
        self._buckets: dict[str, _Bucket] = {}
        self._overall = self._bucket(OVERALL_BUDGET)
        self._logged: dict[str, float] = {}

    async def check(self, user: str, password: str) -> Verdict:
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        hashed = self.config.users.get(user)
        now = self._clock()
        hit = self._verified.get(key)
        if hit is not None and hit[0] > now and hit[1] == hashed:
            self._remember(self._verified, key, now + REMEMBER, hashed)
            return Verdict(True)
        miss = self._failed.get(key)
        if miss is not None and miss[0] > now and miss[1] == hashed:
            return Verdict(False)
        name = user if hashed is not None else UNKNOWN_USER
        wait = self._take(name, now)
        if wait > 0:
            return Verdict(False, wait)
        async with self._semaphore:
            ok = await asyncio.to_thread(_checkpw, password, hashed)
        now = self._clock()
        if ok:
            self._give_back(name)
            self._remember(self._verified, key, now + REMEMBER, hashed)
        else:
            self._remember(self._failed, key, now + FORGET_FAILED, hashed)
        return Verdict(ok)

    def _bucket(self, budget: tuple[float, float]) -> _Bucket:
        capacity, rate = budget
        return _Bucket(capacity, rate, capacity, self._clock())

    def _take(self, name: str, now: float) -> float:
        user = self._buckets.get(name)
        if user is None:
            if len(self._buckets) >= MEMORY:  # only configured names and UNKNOWN_USER get here
                self._buckets.clear()
            user = self._buckets[name] = self._bucket(PER_USER_BUDGET)
        for bucket in (user, self._overall):
            bucket.refill(now)
        wait = max(user.wait(), self._overall.wait())
        if wait > 0:
            self._warn(name if user.wait() > 0 else "*", wait, now)
            return wait
        user.tokens -= 1
        self._overall.tokens -= 1
        return 0.0

    def _give_back(self, name: str) -> None:
        for bucket in (self._buckets.get(name), self._overall):
            if bucket is not None:
                bucket.tokens = min(bucket.capacity, bucket.tokens + 1)

    def _warn(self, name: str, wait: float, now: float) -> None:
        if self._logged.get(name, -BUDGET_LOG_EVERY) + BUDGET_LOG_EVERY > now:
            return
        self._logged[name] = now
        who = {"*": "all users", UNKNOWN_USER: "unknown user names"}.get(name, f"user {name!r}")
        log.warning("basic auth: too many failed logins for %s; refusing further checks for %.0f s "
                    "(429; verified clients are not affected)", who, wait)

    @staticmethod
    def _remember(memory: OrderedDict, key: bytes, expiry: float, hashed: bytes | None) -> None:
        memory[key] = (expiry, hashed)
        memory.move_to_end(key)
        while len(memory) > MEMORY:
            memory.popitem(last=False)


def _checkpw(password: str, hashed: bytes | None) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed or DUMMY_HASH) and hashed is not None
    except ValueError:  # a hash bcrypt cannot read (validated at load; defence in depth)
        return False
