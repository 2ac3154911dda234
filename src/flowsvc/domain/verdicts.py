"""Judge verdicts: score, passed and reason read from what evaluation flows really answer.

Judges are prompts, and prompts produce almost-JSON: objects wrapped in code fences or prose,
templates that paste an unescaped object into a string, or plain text such as "Score: 8/10".
Each reading below is tried in order and the first that yields a score or a pass/fail wins,
so the same text always gives the same verdict:

1. the whole text as a JSON object;
2. the first JSON object inside the text (in a code fence or prose) with `score` or `passed`;
3. `score` / `passed` / `reason` key-value pairs anywhere, quoted or not, so that a broken
   JSON object still gives what it plainly says;
4. where no `passed` key is given, a bare PASS or FAIL (upper case, as a word of its own;
   text with both is not guessed at).

A score may be a number, a fraction (`8/10` is 0.8) or a percentage (`85%` is 0.85). When one
of score and passed is missing it is derived: passed alone gives score 1 or 0, score alone
gives passed = score >= 0.5. Text with neither is refused with NoVerdict, which quotes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# How much of a refused response the error quotes: enough to see what the judge wrote,
# bounded because the error is stored with the job and shown to every caller.
QUOTE_CHARS = 200

_NUMBER = r"-?\d+(?:\.\d+)?"
_SCORE_VALUE = re.compile(rf"^\s*({_NUMBER})\s*(?:(%)|/\s*({_NUMBER}))?\s*$")
# A key of its own (not `final_score`, not `inputs.score`), quoted or not, then : or =.
_KEY = r"""(?<![\w.])["']?{name}["']?\s*[:=]\s*["']?"""
_SCORE = re.compile(
    _KEY.format(name="score") + rf"({_NUMBER}\s*(?:%|/\s*{_NUMBER})?)", re.IGNORECASE
)
_PASSED = re.compile(
    _KEY.format(name="pass(?:ed)?") + r"(true|false|yes|no|pass(?:ed)?|fail(?:ed)?)\b",
    re.IGNORECASE,
)
_REASON = re.compile(_KEY.format(name="reason") + r"""([^"\n]*)""", re.IGNORECASE)
_PASS_WORD = re.compile(r"\b(PASS(?:ED)?|FAIL(?:ED)?)\b")
_TRUE_WORDS = {"true", "yes", "pass", "passed"}
_FALSE_WORDS = {"false", "no", "fail", "failed"}


class NoVerdict(ValueError):
    """The judge's text has no score and no pass/fail; the message quotes it."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(f"the evaluation's response has neither a score nor passed: {quote(text)}")


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    passed: bool
    reason: str = ""


def quote(text: str) -> str:
    """The text as a repr, cut to QUOTE_CHARS with the number of characters left out."""
    if len(text) <= QUOTE_CHARS:
        return repr(text)
    return f"{text[:QUOTE_CHARS]!r}… ({len(text) - QUOTE_CHARS} more characters)"


def parse_verdict(text: str) -> Verdict:
    for reading in (_whole_json, _embedded_json, _key_values):
        found = reading(text)
        if found is not None:
            return found
    raise NoVerdict(text)


def _verdict(score: float | None, passed: bool | None, reason: str = "") -> Verdict | None:
    if score is None and passed is None:
        return None
    if score is None:
        score = 1.0 if passed else 0.0
    if passed is None:
        passed = score >= 0.5
    return Verdict(score, passed, reason.strip())


def score_of(text: str) -> float | None:
    """'0.8', '8/10', '85%' as a number; None for anything else (a zero denominator too)."""
    m = _SCORE_VALUE.match(text)
    if m is None:
        return None
    value = float(m.group(1))
    if m.group(2):
        return value / 100
    if m.group(3):
        denominator = float(m.group(3))
        return value / denominator if denominator else None
    return value


def _from_object(data: Any) -> Verdict | None:
    if not isinstance(data, dict):
        return None
    raw_score = data.get("score")
    score: float | None = None
    if isinstance(raw_score, (int, float)) and not isinstance(raw_score, bool):
        score = float(raw_score)
    elif isinstance(raw_score, str):
        score = score_of(raw_score)
    raw_passed = data.get("passed", data.get("pass"))
    passed: bool | None = None
    if isinstance(raw_passed, bool):
        passed = raw_passed
    elif isinstance(raw_passed, str) and raw_passed.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        passed = raw_passed.strip().lower() in _TRUE_WORDS
    reason = data.get("reason")
    return _verdict(score, passed, reason if isinstance(reason, str) else "")


def _whole_json(text: str) -> Verdict | None:
    try:
        return _from_object(json.loads(text))
    except ValueError:
        return None


def _embedded_json(text: str) -> Verdict | None:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            data, _ = decoder.raw_decode(text, start)
        except ValueError:
            data = None
        found = _from_object(data)
        if found is not None:
            return found
        start = text.find("{", start + 1)
    return None


def _key_values(text: str) -> Verdict | None:
    score = None
    if m := _SCORE.search(text):
        score = score_of(m.group(1))
    m = _PASSED.search(text)
    passed = m.group(1).lower() in _TRUE_WORDS if m else _pass_word(text)
    reason = m.group(1).strip(" '\t,}") if (m := _REASON.search(text)) else ""
    return _verdict(score, passed, reason)


def _pass_word(text: str) -> bool | None:
    words = {str(w).startswith("PASS") for w in _PASS_WORD.findall(text)}
    if len(words) != 1:
        return None  # none, or both PASS and FAIL: no guessing which one the judge meant
    return words.pop()
