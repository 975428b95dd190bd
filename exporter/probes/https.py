"""HTTPS prober: resolve, connect (or proxy + CONNECT), TLS with SNI, one GET.

Success means the endpoint answered (any HTTP status: these endpoints answer
403/404/503 to a bare GET) over a TLS connection whose chain verifies for the
host name against the trust store. The chain is reported whether it verifies
or not. Revocation and pinning are judged elsewhere and never change this.
"""

from __future__ import annotations

import asyncio
import time

from ..config import ProbeJob
from ._net import ProbeFailure, ProbeState, Trace, exchange, open_stream, result_from, start_tls, translate
from ._tls import presented_chain, tls_facts
from .env import ProbeEnv
from .result import ProbeResult


async def probe(job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> ProbeResult:
    target = job.target
    state = ProbeState(trace=trace)
    started_at = time.time()
    stream = answer = tls = None
    failure: ProbeFailure | None = None
    try:
        async with asyncio.timeout(job.group.timeout):
            stream = await open_stream(
                target.host, target.port, job.route, env.connect_to, env.limits, state, tunnel=True
            )
            ssl_object = await start_tls(stream, target.host, env.ssl_context, state)
            # The `tls` phase runs on through the chain check (part of the handshake
            # on Windows, and in Go's for blackbox_exporter) until the request is sent:
            # the phases then add up to the probe's duration, and a slow check shows
            # where it belongs.
            presented = presented_chain(ssl_object)
            verdict = env.trust.verify(presented, target.host)
            tls = tls_facts(ssl_object, presented, verdict)
            if verdict.reason is not None:
                # Windows would stop here; we stop too, with the chain on record.
                raise ProbeFailure(verdict.reason, verdict.error)
            state.log(f"chain verified to {tls.root.subject if tls.root else '?'}")
            answer = await exchange(stream, target.request_target, target.authority, env.limits, state)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a documented reason
        failure = translate(exc, state)
    finally:
        if stream is not None:
            stream.abort()
    return result_from(state, started_at, failure, answer=answer, stream=stream, tls=tls)
