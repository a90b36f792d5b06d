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
# a number as Python's float reads it (with an exponent), or with thousands separators, '$' before, '%' after; never
# a part of digits joined by a comma that is not a thousands separator ("1,5": a decimal comma is not read)
_NUMBER = re.compile(r"(?<!\d,)[-−]?\$?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?%?(?!,\d)")


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
    """The answer number's token and its character span in ``text``: the first after the last "answer", else the
    last number; markup characters are skipped."""
    kept = [i for i, ch in enumerate(text) if not _MARKUP.fullmatch(ch)]
    clean = "".join(text[i] for i in kept)
    anchor = clean.lower().rfind("answer")
    after = list(_NUMBER.finditer(clean, anchor)) if anchor >= 0 else []
    match = after[0] if after else (list(_NUMBER.finditer(clean)) or [None])[-1]
    return None if match is None else (match.group(), (kept[match.start()], kept[match.end() - 1] + 1))


def number_span(text: str) -> Optional[tuple[int, int]]:
    """Where in ``text`` the number that ``parse_number`` reads stands (character offsets), or None."""
    found = _find_number(text)
    return None if found is None else found[1]


def parse_number(text: str) -> Optional[tuple[float, bool]]:
    """The answer number in ``text`` and whether it carried a '%': after the last "answer", else the last one."""
    found = _find_number(text)
    if found is None:
        return None
    token = found[0]
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
