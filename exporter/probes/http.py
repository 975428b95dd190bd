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

from ..config import ProbeJob
from ._net import ProbeState, Trace
from .env import ProbeEnv
from .fetch import Fetched, TLSPolicy, fetch
from .result import ProbeResult


async def probe(job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> ProbeResult:
    state = ProbeState(trace=trace)
    started_at = time.time()
    fetched = await fetch(
        job.target.url, job.route, env.connect_to, env.limits, timeout=job.group.timeout, state=state,
        # The transfer is measured up to the cap, also of a body announced longer.
        read_oversized=True, tls=TLSPolicy(env.ssl_context, env.trust),
    )
    return _result(state, started_at, fetched)


def _result(state: ProbeState, started_at: float, fetched: Fetched) -> ProbeResult:
    failure = fetched.failure
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
    )
