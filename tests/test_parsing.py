import pytest

from semift_lightning.tasks.parsing import numbers_match, parse_choice, parse_number, texts_match

SENTIMENT = ["negative", "neutral", "positive"]
ABCD = ["Paris", "London", "Berlin", "Rome"]


@pytest.mark.parametrize("text, expected", [
    ("Answer: B.", 1),
    ("**Answer:** B", 1),
    ("The answer is (B)", 1),
    ("the answer is [C]", 2),
    ("B", 1),
    ("B.", 1),
    ("(D)", 3),
    ("C) Berlin", 2),
    ("London", 1),
    ("I think it is Rome.", 3),
    ("A looks wrong, so the answer is D", 3),
    ("Final answer: option A", 0),
    ("Answer: E", None),          # a letter beyond the options is no answer, never a wrong letter
    ("Answer: Bullish", None),    # "B" of a word is not a letter answer
    ("I am not sure", None),      # "I" of a sentence is not a letter answer
    ("Paris or London", None),    # two options named: ambiguous
    ("", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, ABCD) == expected


def test_parse_choice_sentiment_text_and_nested_options():
    assert parse_choice("The sentiment is positive.", SENTIMENT) == 2
    assert parse_choice("neutral", SENTIMENT) == 1
    moral = ["Wrong, Wrong", "Wrong, Not wrong", "Not wrong, Wrong", "Not wrong, Not wrong"]
    assert parse_choice("Not wrong, Not wrong", moral) == 3
    assert parse_choice("Answer: J", list("abcdefghij")) == 9


@pytest.mark.parametrize("text, expected", [
    ("The answer is 1,234.5", (1234.5, False)),
    ("12%", (12.0, True)),
    ("Answer: -3.5 million", (-3.5, False)),
    ("about $1,000", (1000.0, False)),
    ("From 2019 to 2020 it grew; answer: 7.1%", (7.1, True)),
    ("no numbers here", None),
    ("1.5e3", (1500.0, False)),       # what Python's float reads, exponents included
    ("Answer: -2.5E-2", (-0.025, False)),
    ("1e999", None),                  # not finite: refused, never read as 999
    ("1,5", None),                    # a decimal comma is not read as 5
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_numbers_match_tolerance_and_percent():
    assert numbers_match((100.5, False), (100.0, False))
    assert not numbers_match((103.0, False), (100.0, False))
    assert numbers_match((12.0, True), (0.12, False))
    assert numbers_match((0.12, False), (12.0, True))
    assert not numbers_match((12.0, False), (0.12, False))


def test_texts_match():
    assert texts_match("The Eiffel Tower!", "eiffel tower")
    assert texts_match("Eiffel towers", "Eiffel Tower")
    assert not texts_match("Big Ben", "Eiffel Tower")
    assert not texts_match("anything", "")



def test_the_answer_span_is_where_the_parsed_answer_stands_in_the_text():
    from semift_lightning.tasks.parsing import number_span
    from semift_lightning.tasks.registry import get_preset
    text = "Revenue was 3 units; the answer is **1,500** dollars."
    start, end = number_span(text)
    assert text[start:end] == "1,500" and parse_number(text) == (1500.0, False)
    assert number_span("no number here") is None
    numeric, free = get_preset("numeric").task, get_preset("free_text").task
    assert numeric.answer_span(text, None) == (start, end)
    reply = "Answer: Paris\nbecause it is the capital"
    start, end = free.answer_span(reply, None)
    assert reply[start:end] == "Paris"
    assert free.answer_span("   ", None) is None
