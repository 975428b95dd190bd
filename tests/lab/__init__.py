"""The project's test lab: a generated PKI, asyncio servers on loopback, and a real Squid.

Imported as `lab` (tests/conftest.py makes sure tests/ is on sys.path):

    from lab import LabPKI, LabServers, Squid, Ok, Delay, Files, NeverAnswer, ...

- lab.pki      LabPKI.create(dir, name="Lab"): root "Lab Root Certificate Authority 2011",
               issuing "Lab Secure Server CA 2024", issue_leaf(...) -> LeafBundle, make_crl(...),
               an inspection root (pki.inspection / issue_inspection_leaf) on demand.
- lab.servers  LabServers (context manager, own event-loop thread): serve(behaviour, ip=, port=,
               tls=LeafBundle) -> LabServer with counters; alloc_ip(), refused_address(), free_port().
- lab.squid    Squid(workdir, {name: ip}, deny_domains=, auth=(user, pw)) -> a real squid -N.

Nothing here contacts the internet: every socket is on 127.0.0.0/8.
"""

from .pki import CA, DEFAULT, LabPKI, LeafBundle
from .servers import (
    Behaviour,
    Delay,
    EarlyHints,
    EndlessBody,
    EndlessHeaders,
    Files,
    Garbage,
    LabServer,
    LabServers,
    NeverAnswer,
    Ok,
    RecordedRequest,
    Redirect,
    ResetMidHandshake,
    ResetOnAccept,
    Slowloris,
    Truncated,
    alloc_ip,
    free_port,
    refused_address,
)
from .squid import Squid, SquidError, SquidFactory

__all__ = [
    "CA", "DEFAULT", "LabPKI", "LeafBundle",
    "Behaviour", "Delay", "EarlyHints", "EndlessBody", "EndlessHeaders", "Files", "Garbage", "LabServer", "LabServers",
    "NeverAnswer", "Ok", "RecordedRequest", "Redirect", "ResetMidHandshake", "ResetOnAccept", "Slowloris", "Truncated",
    "alloc_ip", "free_port", "refused_address",
    "Squid", "SquidError", "SquidFactory",
]  # fmt: skip
