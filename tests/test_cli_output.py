"""How the command line writes figures."""

from __future__ import annotations

import pytest

from flowsvc.cli.output import money


@pytest.mark.parametrize(
    ("cost", "shown"),
    [(0.0, "-"), (0.0123456, "$0.0123"), (4.95e-06, "$0.00000495"), (2.5, "$2.5000")],
)
def test_a_cost_is_shown_never_as_zero_when_it_is_not(cost: float, shown: str) -> None:
    assert money(cost) == shown
