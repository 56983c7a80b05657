"""Task accuracy: does a free-form response carry the reference answer?

Numeric answers (the reference parses as one number: ``42``, ``-5``, ``1,234``, ``7.5``,
``forty-two``) are compared as numbers, so formatting does not matter:

- numbers in the response are digits, with thousands commas (``1,234`` = 1234; a comma not followed
  by exactly three digits separates numbers, as in a list), an optional decimal part, and a sign
  attached to the digits (``-5``, ``−5``; ``10 - 3`` is a subtraction, not −3), or English number
  words (``seven``, ``forty-two``, ``one hundred and five``, ``two thousand``), with ``minus`` /
  ``negative`` as a sign when not between two numbers (``minus five`` = −5; ``ten minus three``
  holds 10 and 3). Currency, percent signs and trailing text (``42.``, ``42 apples``) are ignored.
- which number is the answer: the first one after the **last explicit marker** (``answer is``,
  ``answer:``, ``answer =``, ``result is``, ``final answer``, ``####``); without a marker, the
  **last** number in the response (the convention of GSM8K-style scorers: a model that restates
  the question, "7 plus 5 is 12", ends with its answer), where numbers in digits, if the response
  has any, win over number words ("42 is the one" answers 42: "one" is often a pronoun).
- equal within a relative 1e-6.

Other answers are text: after lower-casing and trimming spaces and end punctuation, the response
must equal the answer, start with it (as whole words: "yes, because …" for "yes"), or say it right
after the last explicit marker.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
SIGNS = ("minus", "negative")

_DIGITS = re.compile(
    r"(?P<sign>(?<![\w.])[-−–])?(?<![\w.])"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.(?P<frac>\d+))?"
)
_WORD = re.compile(r"[a-z]+|-")
_MARKER = re.compile(
    r"(?:\bfinal answer\b|\banswer\b|\bresult\b)\s*(?:is|would be|will be|equals|=|:)|####"
)
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})


@dataclass(frozen=True)
class Number:
    """A number found in a text, and where it starts and ends."""

    value: float
    start: int
    end: int
    words: bool = False


def _normal(text: str) -> str:
    return " ".join(text.translate(_APOSTROPHES).lower().split())


def _category(word: str) -> str | None:
    if word in UNITS:
        return "unit"
    if word in TEENS:
        return "teen"
    if word in TENS:
        return "tens"
    if word == "hundred":
        return "hundred"
    if word in SCALES:
        return "scale"
    return None


_FOLLOWS = {
    # which word may continue a number phrase after which: "forty two", "two hundred and five"
    "unit": {"hundred", "scale"},
    "teen": {"hundred", "scale"},
    "tens": {"unit", "scale"},
    "hundred": {"unit", "teen", "tens", "scale"},
    "scale": {"unit", "teen", "tens"},
}


def _word_value(words: list[str]) -> int:
    total, current = 0, 0
    for word in words:
        if word in UNITS:
            current += UNITS[word]
        elif word in TEENS:
            current += TEENS[word]
        elif word in TENS:
            current += TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * SCALES[word]
            current = 0
    return total + current


def _word_numbers(text: str) -> list[Number]:
    """Numbers in words; ``minus``/``negative`` before one is a sign unless it follows a number."""
    tokens = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
    found: list[Number] = []
    i = 0
    while i < len(tokens):
        word, start, _ = tokens[i]
        negative = False
        if word in SIGNS and i + 1 < len(tokens) and _category(tokens[i + 1][0]):
            before = text[:start].rstrip()
            after_number = before[-1:].isdigit() or bool(found) and found[-1].end == len(before)
            if not after_number:
                negative = True
                i += 1
        if _category(tokens[i][0]) is None:
            i += 1
            continue
        words = [tokens[i][0]]
        last = _category(tokens[i][0])
        end = tokens[i][2]
        j = i + 1
        while j < len(tokens):
            nxt = tokens[j][0]
            if nxt in ("-", "and") and j + 1 < len(tokens):
                after = _category(tokens[j + 1][0])
                joins = (nxt == "-" and last == "tens" and after == "unit") or (
                    nxt == "and" and last in ("hundred", "scale") and after in _FOLLOWS[last]
                )
                if joins:
                    j += 1
                    continue
                break
            category = _category(nxt)
            if category is None or last == "unit" and words[-1] == "zero":
                break
            if category not in _FOLLOWS[last]:
                break
            words.append(nxt)
            last, end = category, tokens[j][2]
            j += 1
        value = _word_value(words)
        found.append(Number(float(-value if negative else value), start, end, words=True))
        i = j
    return found


def find_numbers(text: str) -> list[Number]:
    """Every number in ``text`` (digits or words), in order of appearance."""
    text = _normal(text)
    found = []
    for match in _DIGITS.finditer(text):
        value = float(match.group("int").replace(",", "") + "." + (match.group("frac") or "0"))
        found.append(Number(-value if match.group("sign") else value, match.start(), match.end()))
    found += _word_numbers(text)
    return sorted(found, key=lambda n: n.start)


def parse_number(text: str | int | float) -> float | None:
    """The value when ``text`` is exactly one number (``"1,234"``, ``"-5"``, ``"forty-two"``)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    normal = _normal(str(text)).rstrip(".")
    numbers = find_numbers(normal)
    if len(numbers) != 1:
        return None
    number = numbers[0]
    rest = (normal[: number.start] + normal[number.end :]).strip(" $%")
    return number.value if not rest else None


def extract_answer(response: str) -> float | None:
    """The number a response gives as its answer (see the module docstring), or None."""
    text = _normal(response)
    numbers = find_numbers(text)
    if not numbers:
        return None
    for marker in reversed(list(_MARKER.finditer(text))):
        after = [n for n in numbers if n.start >= marker.end()]
        if after:
            return after[0].value
    digits = [n for n in numbers if not n.words]
    return (digits or numbers)[-1].value


def _clean_text(text: str) -> str:
    return _normal(text).strip(" .,!?;:'\"")


def answer_matches(response: str, answer: str | int | float) -> bool:
    """Whether ``response`` gives ``answer``: numerically when it is a number, else as text."""
    expected = parse_number(answer)
    if expected is not None:
        got = extract_answer(response)
        return got is not None and math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9)
    wanted = _clean_text(str(answer))
    if not wanted:
        return False
    text = _clean_text(response)
    candidates = [text] + [text[m.end() :].strip(" .,:") for m in _MARKER.finditer(text)][-1:]
    pattern = re.compile(re.escape(wanted) + r"(?!\w)")
    return any(pattern.match(candidate) for candidate in candidates)
