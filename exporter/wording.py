"""Small helpers for the words people read: counts with the right plural, addresses as URLs.

    plural(1, "probe job")       -> "1 probe job"
    plural(3, "probe job")       -> "3 probe jobs"
    http_url("http", "::1", 10100) -> "http://[::1]:10100"
"""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """`count` and `noun`, the noun in the plural unless `count` is 1."""
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


def host_port(host: str, port: int) -> str:
    """HOST:PORT as in a URL: an IPv6 address in brackets (RFC 3986)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{host_port(host, port)}"
