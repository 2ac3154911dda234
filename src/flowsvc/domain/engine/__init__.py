"""The durable engine: walks a pinned flow version step by step, journaling every move.

journal.py         its dependencies, held sessions, journaling (the base of the others)
steps.py           executing a step and recording its outcome
session_ops.py     input, cancel, expiry, deletion of a held session
runner.py          the run loop: launching, scheduling, waiting, driving a run (Engine)
session_registry   the sessions this replica holds, leased in the database
coordinator.py     each replica's background duties toward the others
"""

from flowsvc.domain.engine.journal import TERMINAL_RUN
from flowsvc.domain.engine.runner import Engine
from flowsvc.domain.engine.session_registry import HeldElsewhere, SessionState
from flowsvc.domain.engine.steps import body_text, effective_llm

__all__ = ["TERMINAL_RUN", "Engine", "HeldElsewhere", "SessionState", "body_text", "effective_llm"]
