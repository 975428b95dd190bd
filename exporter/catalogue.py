"""The built-in catalogue (catalogue.yaml) as data, narrowed to what a site's endpoints use.

Three settings of the configuration select from it, before a user's own `groups:`
are merged in:

- `connectivity:` the profile. `standard` (the article's hosts) or `streamlined`
  (new Defender for Endpoint tenants: MAPS and sample storage through
  `mdav.<geo>.endpoint.security.microsoft.com`), whose groups replace the
  standard groups of the same name.
- `region:` a geography (`us`, `eu`, `uk`, `au`) keeps only the targets of that
  geography and those that serve every geography; `all` keeps all.
- `ctl_mirror_url:` the certificate trust lists are probed at this internal mirror
  (Windows' "Automatic Update URL", RootDirURL) instead of at Microsoft.

Every catalogue target leaves here with its `source` set (the group's, unless the
target names its own); targets from a user's file have the source `config`.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import yaml

CONNECTIVITY_PROFILES = ("standard", "streamlined")
REGIONS = ("all", "us", "eu", "uk", "au")
CONFIG_SOURCE = "config"  # the source of every target a user's file defines


def builtin_catalogue() -> dict[str, Any]:
    """catalogue.yaml as parsed (a fresh copy: callers may change it)."""
    return copy.deepcopy(_parsed())


@cache
def _parsed() -> dict[str, Any]:
    text = resources.files("exporter").joinpath("catalogue.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def source_urls() -> dict[str, str]:
    """Where each named source can be read (`article` is Microsoft's article)."""
    return dict(_parsed()["sources"])


def catalogue_groups(connectivity: str = "standard", region: str = "all", ctl_mirror_url: str | None = None) -> dict[str, dict[str, Any]]:
    """The catalogue's groups for one site, in the same schema as the config's `groups:`."""
    data = builtin_catalogue()
    groups: dict[str, dict[str, Any]] = data["groups"]
    if connectivity != "standard":
        groups.update(data["profiles"][connectivity])
    for group in groups.values():
        default = group.pop("source", "article")
        targets = []
        for target in group["targets"]:
            target.setdefault("source", default)
            if region == "all" or target.get("region") in (None, region):
                targets.append(target)
        group["targets"] = targets
    if ctl_mirror_url is not None:
        groups["ctl"]["targets"] = [_mirrored(t, ctl_mirror_url) for t in groups["ctl"]["targets"]]
    return groups


def _mirrored(target: dict[str, Any], mirror: str) -> dict[str, Any]:
    # Windows asks the mirror for the same file names it asks Microsoft for.
    name = urlsplit(target["url"]).path.rsplit("/", 1)[-1]
    return {**target, "url": mirror.rstrip("/") + "/" + name, "source": CONFIG_SOURCE}
