"""Judge verdicts as judges really write them: pure, so tested without a server."""

from __future__ import annotations

import pytest

from flowsvc.domain.verdicts import QUOTE_CHARS, NoVerdict, Verdict, parse_verdict

STRICT_JSON = [
    ('{"score": 0.25, "passed": true}', Verdict(0.25, True)),
    ('{"score": 1}', Verdict(1.0, True)),
    ('{"passed": false}', Verdict(0.0, False)),
    (
        '{"score": 0.4, "passed": true, "reason": "cites the source"}',
        Verdict(0.4, True, "cites the source"),
    ),
    ('{"score": "0.9", "passed": "yes"}', Verdict(0.9, True)),
    ('{"score": "7/10"}', Verdict(0.7, True)),
    ('{"score": 0.3, "pass": "FAIL"}', Verdict(0.3, False)),
]

EMBEDDED_JSON = [
    (
        '```json\n{"score": 0.8, "passed": true, "reason": "complete"}\n```',
        Verdict(0.8, True, "complete"),
    ),
    (
        'Here is my evaluation:\n{"score": 0.2, "passed": false}\nLet me know if you need more.',
        Verdict(0.2, False),
    ),
    # An object without a verdict is passed over for the one that has it.
    ('Input was {"question": "q"}. Verdict: {"score": 0.6}', Verdict(0.6, True)),
]

BROKEN_JSON = [
    # A template pasted an object into a string without escaping it.
    ('{"score": 0.75, "passed": true, "saw": "{"ref":"gold"}"}', Verdict(0.75, True)),
    # Single quotes, trailing comma: Python-ish, not JSON.
    ("{'score': 0.5, 'passed': False, 'reason': 'too short',}", Verdict(0.5, False, "too short")),
    ('{"score": 0.9, "reason": "says "blue" twice", "passed": true', Verdict(0.9, True, "says")),
]

PLAIN_TEXT = [
    ("Score: 8/10", Verdict(0.8, True)),
    ("Score = 0.7\nPassed: no", Verdict(0.7, False)),
    ("passed: TRUE", Verdict(1.0, True)),
    ("score: 85%", Verdict(0.85, True)),
    (
        "Reasoning: the answer is partial.\nFinal score: 3 / 10\nReason: misses the cause",
        Verdict(0.3, False, "misses the cause"),
    ),
    ("PASS", Verdict(1.0, True)),
    ("Verdict: FAIL - the answer contradicts the reference.", Verdict(0.0, False)),
    # A score with a PASS beside it: the judge's pass/fail is kept, not derived from the score.
    ("Score: 4/10. PASS (lenient rubric)", Verdict(0.4, True)),
    ('score: 0.9, passed: true (judged: a {"quoted": object})', Verdict(0.9, True)),
]


@pytest.mark.parametrize(("text", "verdict"), STRICT_JSON)
def test_strict_json_is_read_as_is(text: str, verdict: Verdict) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(("text", "verdict"), EMBEDDED_JSON)
def test_json_in_code_fences_or_prose_is_found(text: str, verdict: Verdict) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(("text", "verdict"), BROKEN_JSON)
def test_broken_json_gives_the_key_values_it_plainly_shows(text: str, verdict: Verdict) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(("text", "verdict"), PLAIN_TEXT)
def test_plain_text_forms_are_read(text: str, verdict: Verdict) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text",
    [
        "",
        "great answer",
        '{"score": "high"}',
        "[1, 2]",
        "Score: 3/0",
        # Both PASS and FAIL with no score: not guessed at.
        "FAIL on style, PASS on facts",
        # Words that only contain the markers, and keys that only end in `score`.
        "PASSWORD FAILURE",
        '{"subscore": 0.5, "final_score_note": "n/a"}',
        "pass the salt",
    ],
)
def test_text_without_a_verdict_is_refused(text: str) -> None:
    with pytest.raises(NoVerdict):
        parse_verdict(text)


def test_a_refusal_quotes_the_text() -> None:
    with pytest.raises(NoVerdict) as info:
        parse_verdict("looks fine to me")
    assert "'looks fine to me'" in str(info.value)


def test_a_refusal_quotes_a_long_text_cut_with_how_much_was_left_out() -> None:
    text = "x" * (QUOTE_CHARS + 50)
    with pytest.raises(NoVerdict) as info:
        parse_verdict(text)
    message = str(info.value)
    assert "x" * QUOTE_CHARS in message and "x" * (QUOTE_CHARS + 1) not in message
    assert "(50 more characters)" in message


def test_the_first_object_with_a_verdict_wins_over_later_ones() -> None:
    text = 'noise {"score": 0.1} then {"score": 0.9} and score: 0.5'
    assert parse_verdict(text) == Verdict(0.1, False)
