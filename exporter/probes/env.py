"""What every prober gets besides the job: shared, immutable, built once per config."""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConnectTo, Limits
from ._net import UnexpectedErrors
from ._staple import StaplingContext
from ._tls import TrustStore, client_context


@dataclass(frozen=True)
class ProbeEnv:
    connect_to: tuple[ConnectTo, ...]
    limits: Limits
    trust: TrustStore
    ssl_context: ssl.SSLContext
    # For handshakes whose revocation is judged the way Windows does (MAPS groups): asks for a
    # stapled OCSP response (_staple.py). None: nothing asks for one.
    stapling_context: ssl.SSLContext | None = None
    # Fetches a chain's missing issuers from caIssuers URLs on the system route (exporter.aia.IssuerCache);
    # None: no AIA chasing.
    aia: Any = None
    # Where the probes log an unexpected error's traceback, once per type and target
    # (_net.UnexpectedErrors); a reload's new env takes over the running one's.
    errors: UnexpectedErrors = field(default_factory=UnexpectedErrors)

    def with_system_routes(self, routes_for) -> "ProbeEnv":
        """This env with AIA fetches routed per URL by `routes_for` (Assessor.system_routes_for), for
        a system route that is a PAC, WPAD or fallback list rather than one path."""
        if self.aia is None:
            return self
        return dataclasses.replace(self, aia=self.aia.with_routes(routes_for))

    @classmethod
    def from_config(cls, config: Config, *, trust: TrustStore | None = None,
                    errors: UnexpectedErrors | None = None) -> "ProbeEnv":
        from ..aia import IssuerCache  # the probes package does not otherwise depend on it

        errors = errors if errors is not None else UnexpectedErrors()
        return cls(
            connect_to=config.connect_to,
            limits=config.limits,
            trust=trust or TrustStore(ca_file=config.tls.ca_file),
            ssl_context=client_context(),
            stapling_context=StaplingContext() if config.tls.ocsp_stapling else None,
            aia=IssuerCache(config.limits, config.connect_to, config.routes["system"], errors=errors),
            errors=errors,
        )
