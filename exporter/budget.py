"""How long one job may take: the one time budget, derived from the group's timeout.

A job is a probe, then its assessment (the chain's OCSP answers and CRLs,
fetched on the system route). The group's `timeout` bounds the probe: each
prober holds one deadline for all its phases, and a route that fails over to
its next proxy tries it within what is left of that deadline (`spent`). The
revocation stage then gets the group's timeout too, but never more than what
ends the whole job within `timeout + ASSESSMENT_GRACE`
(and at least MIN_REVOCATION seconds, so that a probe that used its whole
timeout still gets its chain's CRLs asked once). Whoever waits for a job, the
scheduler and /probe alike, gives up at `timeout + HARD_MARGIN`: later than
any job that keeps its budget ends, so it only ever cuts off a bug, whose result
is then dropped (and logged).
"""

from __future__ import annotations

from dataclasses import dataclass

# Over the group's timeout: the most a job's assessment may add after a slow probe.
ASSESSMENT_GRACE = 4.0
# The least the revocation stage gets, however long the probe took.
MIN_REVOCATION = 1.0
# A CRL fetch ends this long before the revocation stage's deadline, on its own timeout
# (so that it, not the stage, names the step that ran out of time).
FETCH_MARGIN = 0.1
# Over the group's timeout: when the scheduler and /probe stop waiting for a job.
HARD_MARGIN = 5.0


@dataclass(frozen=True)
class JobBudget:
    timeout: float  # the group's timeout, seconds
    spent: float = 0.0  # of the probe's deadline, by earlier tries of the job (failover)

    @property
    def probe(self) -> float:
        """The probe's own deadline: every phase of it (on a later try, what is left)."""
        return self.timeout - self.spent

    def revocation(self, probe_duration: float) -> float:
        """What the revocation stage may take after a probe that took `probe_duration`."""
        return max(MIN_REVOCATION, min(self.timeout, self.timeout + ASSESSMENT_GRACE - probe_duration))

    @property
    def hard(self) -> float:
        """When a waiter gives up on the job (probe and assessment)."""
        return self.timeout + HARD_MARGIN
