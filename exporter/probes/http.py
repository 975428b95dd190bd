"""The HTTP(S) prober: one GET of the target's URL over the job's route.

Success means the endpoint answered (any HTTP status: these endpoints answer
403/404/503 to a bare GET); for https over a TLS connection whose chain
verifies for the host name against the trust store (the chain is reported
whether it verifies or not). An answer the route's proxy made itself is a
proxy reason, never the endpoint's (proxy_answer.py). Revocation and pinning
are judged elsewhere (assess.py) and never change this.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from ..config import NO_EXPECT, ProbeJob
from ..reasons import Reason
from . import content
from ._http import HTTPAnswer
from ._net import ProbeFailure, ProbeState, Trace
from .env import ProbeEnv
from .fetch import CRYPTNET_REDIRECTS, Fetched, TLSPolicy, fetch
from .result import ProbeResult


async def probe(job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> ProbeResult:
    state = ProbeState(trace=trace, target=job.target.url, errors=env.errors)
    started_at = time.time()
    expect = job.target.expect
    fetched = await fetch(
        job.target.url, job.route, env.connect_to, env.limits, timeout=job.budget.probe, state=state,
        # A CRL or CTL is checked whole: room for it (limits.crl_bytes). Otherwise the
        # transfer is measured up to limits.body_bytes, also of a body announced longer.
        body_cap=env.limits.crl_bytes if expect.content in ("crl", "ctl") else env.limits.body_bytes,
        read_oversized=expect.content is None, tls=TLSPolicy(_context(job, env), env.trust, env.aia),
        # What the OS fetches (CRLs, CA certificates, CTLs) follows redirects as CryptNet does.
        redirects=CRYPTNET_REDIRECTS if expect.content is not None else 0,
    )
    failure = fetched.failure
    if failure is None and fetched.answer is not None and expect != NO_EXPECT:
        # Reading the answer includes judging it: the phases still add up to the duration.
        state.clock.begin("transfer", "checking the content")
        wrong = content.problem(fetched.answer, expect, env.trust, roots=job.group.expected_roots)
        state.clock.stop()
        if wrong is not None:
            failure = ProbeFailure(Reason.UNEXPECTED_CONTENT, f"{wrong}; arrived: {fetched.answer.describe()}")
    return _result(state, started_at, fetched, failure, checked=expect.content is not None)


def _context(job: ProbeJob, env: ProbeEnv):
    """A MAPS group's handshake asks for a stapled OCSP response, as Windows' does: its verdict
    takes the staple before any other revocation source. Other groups keep the standard library's
    TLS (no staple: their revocation is reported, not judged as Windows would)."""
    if job.group.validate_maps and env.stapling_context is not None:
        return env.stapling_context
    return env.ssl_context


def _result(state: ProbeState, started_at: float, fetched: Fetched, failure: ProbeFailure | None, *,
            checked: bool = False) -> ProbeResult:
    answer = fetched.answer
    http_status = answer.status if answer is not None else (failure.http_status if failure else 0)
    if failure is not None:
        state.log(f"FAILED: {failure.reason}: {failure.detail}")
    else:
        state.log(f"OK: HTTP {http_status}")
    return ProbeResult(
        success=failure is None,
        reason=failure.reason if failure else None,
        started_at=started_at,
        duration=state.clock.elapsed(),
        phases=tuple(state.clock.phases.items()),
        detail=failure.detail if failure else "",
        http_status=http_status,
        peer=fetched.peer,
        proxy_status=fetched.proxy_status,
        tls=fetched.tls,
        **_content_facts(answer, checked),
    )


def _content_facts(answer: HTTPAnswer | None, checked: bool) -> dict[str, int | float | None]:
    """Size and Last-Modified of a body whose kind was checked (CTL, CRL, certificate):
    how big and how old the file is that the endpoints will get."""
    if not checked or answer is None or answer.status != 200:
        return {}
    modified = answer.header("last-modified")
    try:
        stamp = parsedate_to_datetime(modified).timestamp() if modified else None
    except (TypeError, ValueError, IndexError, OverflowError):  # a date that does not parse is no date
        stamp = None
    return {"content_bytes": answer.body_bytes, "content_last_modified": stamp}
