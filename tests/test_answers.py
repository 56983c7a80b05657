"""Task scoring: numbers with commas, signs, words and trailing text; wrong answers stay wrong."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from mergekit_safety.evaluation.answers import (  # noqa: E402
    answer_matches,
    extract_answer,
    find_numbers,
    parse_number,
)

CORRECT = [
    ("42", "42"),
    ("The answer is 42.", "42"),
    ("the answer is 17 .", "17"),  # the demo models' answer format
    ("42 apples", 42),
    ("1,234", "1234"),
    ("1234", "1,234"),
    ("It comes to 1,234 dollars.", "1,234"),
    ("Answer: 1,000", "1000"),
    ("$15", "15"),
    ("-5", "-5"),
    ("It is −5.", "-5"),  # a Unicode minus
    ("7 - 12 = -5", "-5"),
    ("The answer is minus five.", "-5"),
    ("negative eighteen", "-18"),
    ("ten minus three is seven", "7"),  # "minus" between numbers is an operator
    ("10 - 3 = 7", "7"),
    ("forty-two", "42"),
    ("Forty two.", 42),
    ("one hundred and five", "105"),
    ("two thousand twenty one", "2021"),
    ("x = 3.50", "3.5"),
    ("10.0", "10"),
    ("12 * 3 = 36, then 36 + 6 = 42", "42"),  # no marker: the last number
    ("The answer is 42. Is there 1 more thing?", "42"),  # the marker wins over the last number
    ("#### 72", "72"),
    ("42 is the one", "42"),  # digits win over number words ("one" is often a pronoun)
    ("Paris is the capital of France.", "Paris"),
    ("yes, because it is even", "yes"),
    ("The answer is: blue.", "blue"),
]
WRONG = [
    ("The answer is 43.", "42"),
    ("", "42"),
    ("I cannot help with that.", "42"),
    ("12,34", "1234"),  # not a thousands comma: 12 and 34
    ("5", "-5"),
    ("10 - 5", "-5"),  # a subtraction, not −5
    ("The answer is 42.", "4"),
    ("4,200", "42"),
    ("The answer is 7. Is there 1 more?", "1"),
    ("yesterday", "yes"),
    ("Lyon is nice.", "Paris"),
]


@pytest.mark.parametrize(("response", "answer"), CORRECT)
def test_correct_answers(response, answer):
    assert answer_matches(response, answer)


@pytest.mark.parametrize(("response", "answer"), WRONG)
def test_wrong_answers(response, answer):
    assert not answer_matches(response, answer)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234", 1234),
        ("-7", -7),
        ("forty-two", 42),
        ("one hundred and five", 105),
        ("3.5", 3.5),
        (12, 12),
        ("42.", 42),
        ("42 apples", None),
        ("blue", None),
        ("1 and 2", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_find_numbers_in_order():
    assert [n.value for n in find_numbers("From 3 to twenty-one, then -4 and 1,000.5")] == [
        3,
        21,
        -4,
        1000.5,
    ]
    assert [n.value for n in find_numbers("one two three")] == [1, 2, 3]
    assert find_numbers("no numbers here") == []


def test_extract_answer():
    assert extract_answer("The answer is 5, not 6.") == 5
    assert extract_answer("3 plus 4 is 7") == 7
    assert extract_answer("nothing") is None
