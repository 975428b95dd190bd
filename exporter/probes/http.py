"""Plain-HTTP prober (port-80 targets and CRL URLs): resolve, connect, one GET.

Through a proxy the request uses the absolute-URI form, as Windows does for
CRL fetches; an answer the proxy generated itself (407, X-Squid-Error,
Proxy-Status error) is not the endpoint's and fails with a proxy reason.
"""

from __future__ import annotations

import asyncio
import time

from ..config import ProbeJob
from ._net import ProbeFailure, ProbeState, Trace, exchange, open_stream, proxy_generated, result_from, translate
from .env import ProbeEnv
from .result import ProbeResult


async def probe(job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> ProbeResult:
    target = job.target
    state = ProbeState(trace=trace)
    started_at = time.time()
    stream = answer = None
    failure: ProbeFailure | None = None
    try:
        async with asyncio.timeout(job.group.timeout):
            stream = await open_stream(
                target.host, target.port, job.route, env.connect_to, env.limits, state, tunnel=False
            )
            request_target = target.url if stream.proxy else target.request_target
            answer = await exchange(stream, request_target, target.authority, env.limits, state)
            if stream.proxy is not None and (reason := proxy_generated(answer)) is not None:
                note = answer.header("X-Squid-Error") or answer.header("Proxy-Status") or ""
                raise ProbeFailure(
                    reason, f"the proxy answered {answer.status} {answer.reason_phrase} itself {note}".strip(),
                    http_status=answer.status,
                )
    except Exception as exc:  # noqa: BLE001 - every failure becomes a documented reason
        failure = translate(exc, state)
    finally:
        if stream is not None:
            stream.abort()
    return result_from(state, started_at, failure, answer=answer, stream=stream)
