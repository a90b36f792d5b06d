"""Turning a model's text into an answer. A parse that maps to nothing is ``None`` ("no answer"), never a guess."""

from __future__ import annotations

import difflib
import math
import re
import string
from typing import Optional, Sequence

LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)

_MARKUP = re.compile(r"[*_`#]")
# "Answer: B.", "the answer is (B)", "Final answer - option C": the letter must stand alone.
_ANSWER_LETTER = re.compile(r"(?i:answer)\s*(?i:is)?\s*[:=\-]?\s*(?i:option\s*)?[\(\[]?([A-Z])[\)\]]?(?![A-Za-z0-9])")
_LEADING_LETTER = re.compile(r"^[\(\[]?([A-Z])(?:[\)\]\.:,]|$)")
# what may be a number in a text: a run of digits with the signs, points, commas, dashes and slashes between them
# ("3,14", "1.2.3", "2024-01-15" are one such run each), an exponent, a percent sign (after a space too)
_NUMBER_LIKE = re.compile(r"(?<![\w.,])[-−+]?\$?(?:\d|\.\d)[\d.,:/\-−]*(?:[eE][-+]?\d+)?(?:\s?%)?")
# the number grammar a run must match whole: sign, '$', digits (thousands separators only in groups of three), one
# decimal point, an exponent, '%'; anything else (a decimal comma, a date, a version) is no number
_NUMBER = re.compile(r"[-−+]?\$?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?%?")


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation, articles and extra white space."""
    text = _MARKUP.sub(" ", text.lower())
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(word for word in text.split() if word not in {"a", "an", "the"})


def parse_choice(text: str, options: Sequence[str]) -> Optional[int]:
    """Index of the option ``text`` names, by letter or by the option's text; None when it names none."""
    clean = _MARKUP.sub("", text).strip()
    stated = _ANSWER_LETTER.findall(clean)
    if stated:
        index = LETTERS.find(stated[-1])
        return index if 0 <= index < len(options) else None
    leading = _LEADING_LETTER.match(clean)
    if leading:
        index = LETTERS.find(leading.group(1))
        return index if 0 <= index < len(options) else None
    return _match_option_text(clean, options)


def _match_option_text(text: str, options: Sequence[str]) -> Optional[int]:
    said = normalize_text(text)
    normalized = [normalize_text(option) for option in options]
    if said in normalized:
        return normalized.index(said) if normalized.count(said) == 1 else None
    padded = f" {said} "
    found = [i for i, option in enumerate(normalized) if option and f" {option} " in padded]
    # "not wrong" contains "wrong": keep only options that are not part of another found option
    found = [i for i in found if not any(j != i and f" {normalized[i]} " in f" {normalized[j]} " for j in found)]
    return found[0] if len(found) == 1 else None


def _find_number(text: str) -> Optional[tuple[str, tuple[int, int]]]:
    """The answer's number-like run and its character span in ``text``: the first after the last "answer", else the
    last one; markup characters are skipped, and sentence punctuation after it is not part of it."""
    kept = [i for i, ch in enumerate(text) if not _MARKUP.fullmatch(ch)]
    clean = "".join(text[i] for i in kept)
    anchor = clean.lower().rfind("answer")
    after = list(_NUMBER_LIKE.finditer(clean, anchor)) if anchor >= 0 else []
    match = after[0] if after else (list(_NUMBER_LIKE.finditer(clean)) or [None])[-1]
    if match is None:
        return None
    token = match.group()
    token = token if token.endswith("%") else token.rstrip(".,:/-−")
    return token, (kept[match.start()], kept[match.start() + len(token) - 1] + 1)


def is_number_text(text: str) -> bool:
    """Whether ``text`` is one number as the grammar reads it (finite or not)."""
    return bool(_NUMBER.fullmatch(text.strip().replace(" ", "")))


def number_span(text: str) -> Optional[tuple[int, int]]:
    """Where in ``text`` the number that ``parse_number`` reads stands (character offsets), or None."""
    found = _find_number(text)
    return None if found is None else found[1]


def parse_number(text: str) -> Optional[tuple[float, bool]]:
    """The answer number in ``text`` and whether it carried a '%': after the last "answer", else the last one."""
    found = _find_number(text)
    if found is None:
        return None
    token = found[0].replace(" ", "")
    if not _NUMBER.fullmatch(token):
        return None
    percent = token.endswith("%")
    value = float(token.rstrip("%").replace(",", "").replace("$", "").replace("−", "-"))
    return (value, percent) if math.isfinite(value) else None


def numbers_match(pred: tuple[float, bool], gold: tuple[float, bool], rel_tol: float = 1e-2) -> bool:
    """Equal within ``rel_tol``; a value written with '%' may also stand for its fraction (12% == 0.12)."""
    def readings(value: float, percent: bool) -> tuple[float, ...]:
        return (value, value / 100) if percent else (value,)
    return any(math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9) for p in readings(*pred) for g in readings(*gold))


def texts_match(pred: str, gold: str, threshold: float = 0.8) -> bool:
    """Normalised exact match, or a fuzzy match whose similarity ratio reaches ``threshold``."""
    a, b = normalize_text(pred), normalize_text(gold)
    return bool(b) and (a == b or difflib.SequenceMatcher(None, a, b).ratio() >= threshold)
