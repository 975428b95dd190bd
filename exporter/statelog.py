"""The log lines an operator reads: what the exporter found, and what changed.

At info level, and never one line per probe:

    first round: 49 probe jobs, 49 failing (dns_error: 49); MAPS verdicts: 2 of 2 invalid (dns_failure, hr=0x80072EE7)
    target https://wdcp.microsoft.com/ (group maps, route defender): failing: connect_timeout (...)
    target https://wdcp.microsoft.com/ (group maps, route defender): ok again (was failing: connect_timeout)
    MAPS verdict for https://wdcp.microsoft.com/ (route defender): invalid, hr=0x80072F8F, cause winhttp_proxy_missing (crl_unreachable)
    MAPS verdict for https://wdcp.microsoft.com/ (route defender): valid again (was hr=0x80072F8F, cause winhttp_proxy_missing)

The first round sets the baseline: its results are summed up in one line once every job has
one, and only later changes get lines of their own. Every result is logged at debug level.
It listens to the ResultStore (called on the event loop after each recorded result).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from .assess import MapsVerdict, Outcome
from .state import ResultStore
from .wording import plural

log = logging.getLogger("exporter")

# What a change is judged on: a target is ok or failing with a reason; a verdict is valid or
# invalid with an hresult and a cause. Details (timings, addresses) are not state.
_TargetState = tuple[bool, str]
_VerdictState = tuple[bool, str, str]


def _target_state(outcome: Outcome) -> _TargetState:
    probe = outcome.probe
    return (True, "") if probe.success else (False, str(probe.reason or "unknown"))


def _verdict_state(verdict: MapsVerdict) -> _VerdictState:
    return (True, "", "") if verdict.valid else (False, verdict.hresult, verdict.cause)


def _where(job) -> str:
    return f"{job.target.url} (group {job.group.name}, route {job.route.name})"


class StateLog:
    def __init__(self, store: ResultStore, *, ready: Callable[[], bool],
                 redact: Callable[[str], str] = str) -> None:
        self.store = store
        self.ready = ready  # the first round is done (runtime.Exporter.ready)
        self.redact = redact  # removes configured proxy passwords from probe details
        self._targets: dict[tuple, _TargetState] = {}
        self._verdicts: dict[tuple, _VerdictState] = {}
        self._summarised = False
        store.listeners.append(self.on_result)

    def on_result(self, key: tuple) -> None:
        job, outcome = self.store.jobs.get(key), self.store.latest.get(key)
        if job is None or outcome is None:
            return
        probe = outcome.probe
        if log.isEnabledFor(logging.DEBUG):
            log.debug("probe of %s: %s in %.3f s%s", _where(job), "ok" if probe.success else probe.reason,
                      probe.duration, f" ({self.redact(probe.detail)})" if probe.detail else "")
        state, before = _target_state(outcome), self._targets.get(key)
        self._targets[key] = state
        verdict = outcome.maps
        verdict_state = _verdict_state(verdict) if verdict is not None else None
        verdict_before = self._verdicts.get(key)
        if verdict_state is None:
            self._verdicts.pop(key, None)
        else:
            self._verdicts[key] = verdict_state
        if len(self._targets) > 2 * len(self.store.jobs) + 100:  # jobs removed by reloads
            self._forget_removed_jobs()
        if not self._summarised:
            if self.ready():
                self._summarised = True
                log.info("%s", self.summary())
            return
        # A job first seen after the first round (added by a reload) gets its baseline quietly,
        # unless it fails: that is news.
        if state != before and (before is not None or not state[0]):
            log.info("target %s: %s", _where(job), self._describe_target(state, before, probe.detail))
        if verdict_state is not None and verdict_state != verdict_before and \
                (verdict_before is not None or not verdict_state[0]):
            log.info("MAPS verdict for %s (route %s): %s", job.target.url, job.route.name,
                     self._describe_verdict(verdict, verdict_before))

    def _forget_removed_jobs(self) -> None:
        for known in (self._targets, self._verdicts):
            for key in [k for k in known if k not in self.store.jobs]:
                del known[key]

    def _describe_target(self, state: _TargetState, before: _TargetState | None, detail: str) -> str:
        ok, reason = state
        if ok:
            return f"ok again (was failing: {before[1]})" if before else "ok"
        text = f"failing: {reason}" + (f" ({self.redact(detail)})" if detail else "")
        if before is not None and not before[0]:
            text += f" (was failing: {before[1]})"
        return text

    @staticmethod
    def _describe_verdict(verdict: MapsVerdict, before: _VerdictState | None) -> str:
        if verdict.valid:
            was = f" (was hr={before[1]}, cause {before[2]})" if before and not before[0] else ""
            return "valid again" + was if was else "valid"
        return f"invalid, hr={verdict.hresult}, cause {verdict.cause}" + (f" ({verdict.reason})" if verdict.reason else "")

    def summary(self) -> str:
        """One line: how many jobs, how many fail and why, and the MAPS verdicts."""
        states = [self._targets[key] for key in self.store.jobs if key in self._targets]
        failing = Counter(reason for ok, reason in states if not ok)
        total = sum(failing.values())
        text = f"first round: {plural(len(states), 'probe job')}, "
        if total:
            text += f"{total} failing (" + ", ".join(f"{r}: {n}" for r, n in failing.most_common()) + ")"
        else:
            text += "all ok"
        verdicts = [self._verdicts[key] for key in self.store.jobs if key in self._verdicts]
        if verdicts:
            invalid = Counter(f"{cause}, hr={hresult}" for valid, hresult, cause in verdicts if not valid)
            count = sum(invalid.values())
            if count:
                text += (f"; MAPS verdicts: {count} of {len(verdicts)} invalid ("
                         + " / ".join(invalid) + ")")
            else:
                text += f"; MAPS {'verdict' if len(verdicts) == 1 else 'verdicts'}: " + \
                        ("valid" if len(verdicts) == 1 else f"all {len(verdicts)} valid")
        return text
