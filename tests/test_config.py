"""Settings from the environment: what parses, in the forms people write."""

from __future__ import annotations

import pytest

from flowsvc.config import Settings


@pytest.mark.parametrize(
    ("variable", "value", "field", "read"),
    [
        ("FLOWSVC_LOG_LEVEL", "warn", "log_level", "WARN"),
        ("FLOWSVC_LOG_LEVEL", "Debug", "log_level", "DEBUG"),
        ("FLOWSVC_SQLITE_SYNCHRONOUS", "full", "sqlite_synchronous", "FULL"),
        ("FLOWSVC_SQLITE_SYNCHRONOUS", "1", "sqlite_synchronous", "NORMAL"),
        ("FLOWSVC_LEASE_SECONDS", "2.5", "lease_seconds", 2.5),
    ],
)
def test_a_setting_is_read_in_the_forms_its_own_tool_takes(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, read: object
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(Settings.from_env(), field) == read


def test_a_setting_that_does_not_parse_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWSVC_STEP_LIMIT", "1e3")
    with pytest.raises(ValueError, match=r"^FLOWSVC_STEP_LIMIT='1e3': not a whole number$"):
        Settings.from_env()
