"""Secrets out of text shown to people: the proxy passwords of the running
configuration, as written, URL-encoded and inside Basic tokens.

The second line of defence: the code paths print proxies as
ProxyURL.redacted() already. Used for everything the web side and `check`
show (status page, /probe?debug, /-/reload's error, check's output) and for
the log lines of statelog.py.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from .config import Config


class Redactor:
    """Removes proxy passwords (as written, URL-encoded and in Basic tokens) from text."""

    def __init__(self, config: Config):
        secrets: set[str] = set()
        for route in config.routes.values():
            proxy = route.proxy
            if proxy is None or not proxy.password:
                continue
            pw = proxy.password
            token = base64.b64encode(f"{proxy.username or ''}:{pw}".encode()).decode()
            secrets.update({pw, quote(pw, safe=""), token})
        # Very short passwords would mangle ordinary words; they are still never printed
        # by the code paths (ProxyURL.redacted()), this is the second line of defence.
        self.secrets = sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "<redacted>")
        return text
