"""Bounds on what a request may ask of the service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_steps_per_version: int = 500
    max_transitions_per_version: int = 2000
    max_template_chars: int = 32_768
    max_step_name_chars: int = 64
    max_label_chars: int = 200
    max_flow_name_chars: int = 200
    max_description_chars: int = 4_000
    max_page_size: int = 100
    default_page_size: int = 20
    max_session_name_chars: int = 40
    max_json_bytes: int = 262_144  # inputs, body, variables, override: each, encoded
    max_messages_per_session: int = 1000
    max_active_runs_per_org: int = 200
    max_subscribers_per_session: int = 500
    max_user_input_chars: int = 100_000
