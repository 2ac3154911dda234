"""Active runs per organisation, for the organisation run limit.

One process on its own database (SQLite) knows every active run in its memory. Replicas
sharing a database also count each other's: the database's count per organisation is read
on every coordinator beat (FLOWSVC_CLAIM_POLL_SECONDS), and between beats this replica adds
its own changes at once. So the limit holds across replicas up to the runs other replicas
start within one beat, at no database query per run.
"""

from __future__ import annotations

from collections import Counter

from flowsvc.domain.ports import Leases


class ActiveRunCounts:
    def __init__(self, leases: Leases) -> None:
        self._leases = leases
        self.local: Counter[str] = Counter()  # this replica's runs going, kept by the engine
        self._elsewhere: dict[str, int] = {}  # other replicas', as of the last beat

    def started(self, org: str) -> None:
        self.local[org] += 1

    def stopped(self, org: str) -> None:
        self.local[org] -= 1
        if self.local[org] <= 0:
            del self.local[org]

    def of(self, org: str) -> int:
        return self._elsewhere.get(org, 0) + self.local.get(org, 0)

    async def refresh(self) -> None:
        if not self._leases.shared:
            return
        here = dict(self.local)
        counted = await self._leases.active_runs_by_org()
        self._elsewhere = {
            org: n - here.get(org, 0) for org, n in counted.items() if n > here.get(org, 0)
        }
