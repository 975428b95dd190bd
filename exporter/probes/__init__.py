"""Probers, one signature, chosen by the target's scheme (http.py serves both
http and https: probes/fetch.py requests a URL over a route, TLS and all).

    async def probe(job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> ProbeResult

A prober never raises: every failure is a ProbeResult with one documented reason.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from ..config import ProbeJob
from . import http
from ._net import Trace
from .env import ProbeEnv
from .result import CertFacts, ProbeResult, TLSFacts

Prober = Callable[..., Awaitable[ProbeResult]]

PROBERS: dict[str, Prober] = {
    "https": http.probe,
    "http": http.probe,
}


async def run_probe(job: ProbeJob, env: ProbeEnv, *, trace: Trace | None = None) -> ProbeResult:
    return await PROBERS[job.target.scheme](job, env, trace=trace)


__all__ = ["PROBERS", "CertFacts", "ProbeEnv", "ProbeResult", "TLSFacts", "Trace", "run_probe"]
