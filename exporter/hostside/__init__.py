"""Optional host-side collectors (off by default): Defender's own tools on this machine.

Public API (see :mod:`exporter.hostside.collector`): :class:`HostSnapshot`,
:func:`collect_host`, :func:`host_samples`; their settings are config.HostConfig.
Pure parsers live in ``mpcmdrun``, ``winhttp``, ``registry``, ``signatures``
and ``mdatp``; ``runner`` runs a command with a deadline and an output cap.
"""

from .collector import HostMaps, HostSnapshot, collect_host, emulated_evidence, host_samples

__all__ = ["HostMaps", "HostSnapshot", "collect_host", "emulated_evidence", "host_samples"]
