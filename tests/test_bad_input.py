"""The bad-input matrix: every data source (CSV, JSON, JSONL, Parquet, datasets) against every kind of bad row or
file. Each case either loads correctly or fails before training with one error naming the file, row and field."""

import csv
import json
import re
from dataclasses import replace

import pytest

from semift_lightning import DataError, SemiFTDataModule
from semift_lightning.records import read_rows, to_examples
from semift_lightning.tasks import get_preset

from semift_lightning.testing import sentiment_rows, write_csv

MC = get_preset("multiple_choice")
COLUMNS = replace(MC.columns, id="id")
SOURCES = ["csv", "json", "jsonl", "parquet", "datasets"]
OPTIONS = ["red", "green", "blue", "black"]


def good_rows() -> list[dict]:
    return [{"id": f"q{i}", "question": f"Which colour is number {i}?", "options": list(OPTIONS), "answer": "ABCD"[i - 1]}
            for i in range(1, 5)]


def write(tmp_path, source: str, rows: list[dict]) -> str:
    """``rows`` in the source's format; returns what ``read_rows`` takes. Options are JSON text in CSV and Parquet
    (one column type) and lists in JSON."""
    as_text = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows]
    if source == "csv":
        path = tmp_path / "data.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in as_text)
    elif source == "json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(rows))
    elif source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist(as_text), path)
    else:
        folder = tmp_path / "dataset" if source == "datasets" else tmp_path
        folder.mkdir(exist_ok=True)
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        if source == "datasets":
            return f"hf:{folder}:train"
    return str(path)


def load(source: str):
    return to_examples(read_rows(source), MC.task, COLUMNS, source)


def edit(row_index: int, **changes):
    """A case that changes fields of one row (None: the row's field is null / empty)."""
    def rows():
        out = good_rows()
        out[row_index].update(changes)
        return out
    return rows


def drop_column(column: str):
    return lambda: [{k: v for k, v in row.items() if k != column} for row in good_rows()]


# case -> (rows, None when the rows load, or the error that must name file, row and field)
ROW_CASES = {
    "extra column": (lambda: [{**row, "source": "quiz"} for row in good_rows()], None),
    "answer as option text": (edit(1, answer="green"), None),
    "missing options column": (drop_column("options"), r"unknown options column 'options'; the columns are"),
    "missing answer column": (drop_column("answer"), r"unknown answer column 'answer'"),
    "empty question": (edit(1, question="  "), r"row 2: field 'question': is missing or empty"),
    "null question": (edit(2, question=None), r"row 3: field 'question': is missing or empty"),
    "null answer": (edit(0, answer=None), r"row 1: field 'answer': is missing or empty"),
    "options not a list": (edit(1, options="red or green"), r"row 2: field 'options': 'red or green' is not a JSON list"),
    "options an object": (edit(1, options='{"a": 1}'), r"row 2: field 'options': expected a list of options, got dict"),
    "empty option": (edit(3, options=["red", ""]), r"row 4: field 'options': holds an empty option"),
    "one option": (edit(1, options=["red"], answer="A"), r"row 2: field 'answer': needs 2 to 10 options, got 1"),
    "eleven options": (edit(1, options=[f"o{i}" for i in range(11)], answer="A"),
                       r"row 2: field 'answer': needs 2 to 10 options, got 11"),
    "answer letter out of range": (edit(2, answer="E"), r"row 3: field 'answer': 'E' is not among the 4 options"),
    "answer not an option": (edit(2, answer="purple"),
                             r"row 3: field 'answer': 'purple' is neither an option letter \(A-D\) nor the text"),
    "duplicate id": (edit(3, id="q1"), r"row 4: field 'id': duplicate id 'q1' \(first in row 1\)"),
    "empty id": (edit(3, id=""), r"row 4: field 'id': is missing or empty"),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
@pytest.mark.parametrize("source", SOURCES)
def test_bad_rows(tmp_path, source, case):
    make_rows, error = ROW_CASES[case]
    rows = make_rows()
    if source == "parquet" and case == "options not a list":
        rows = [{**row, "options": json.dumps(row["options"]) if isinstance(row["options"], list) else row["options"]}
                for row in rows]
    path = write(tmp_path, source, rows)
    if error is None:
        examples = load(path)
        assert [e.answer for e in examples] == ["A", "B", "C", "D"] and examples[1].options == tuple(OPTIONS)
        return
    with pytest.raises(DataError) as caught:
        load(path)
    message = str(caught.value)
    assert re.search(error, message), message
    assert path in message  # the file is named


def test_every_problem_is_listed_at_once(tmp_path):
    rows = good_rows()
    rows[0]["answer"] = "Z"
    rows[2]["question"] = ""
    with pytest.raises(DataError, match=r"2 problem\(s\)[\s\S]*row 1: field 'answer'[\s\S]*row 3: field 'question'"):
        load(write(tmp_path, "jsonl", rows))


def _csv_text(rows, delimiter=","):
    path_rows = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows]
    lines = [delimiter.join(path_rows[0])]
    for row in path_rows:
        lines.append(delimiter.join('"' + str(v).replace('"', '""') + '"' for v in row.values()))
    return "\n".join(lines) + "\n"


FILE_CASES = {
    "truncated csv": ("data.csv", lambda: _csv_text(good_rows()).encode()[:-25],
                      r"data.csv: row 4: 3 fields where the header has 4 \(wrong delimiter or quoting\?\)"),
    "semicolon csv": ("data.csv", lambda: _csv_text(good_rows(), ";").encode(), r"data.csv: line 2: broken CSV"),
    "semicolon csv without quotes": ("data.csv", lambda: b"id;question;options;answer\nq1;Red?;red;A\n",
                                     r"data.csv: unknown question column 'question', .*; the columns are: id;question;options;answer \(is "
                                     r"the delimiter ';'\?\)"),
    "broken quoting csv": ("data.csv", lambda: b'id,question,options,answer\nq1,"Which, "x",A\n',
                           r"data.csv: line 2: broken CSV"),
    "non-utf8 csv": ("data.csv", lambda: _csv_text(good_rows()).encode().replace(b"number 2", b"n\xfamber 2"),
                     r"data.csv: line 3: bytes that are not UTF-8"),
    "truncated json": ("data.json", lambda: json.dumps(good_rows()).encode()[:-30], r"data.json: line 1: not valid JSON"),
    "json not a list": ("data.json", lambda: b'{"rows": []}', r"data.json: expected a JSON list of objects, got dict"),
    "non-utf8 json": ("data.json", lambda: json.dumps(good_rows()).encode().replace(b"number 2", b"n\xfamber 2"),
                      r"data.json: line 1: bytes that are not UTF-8"),
    "truncated jsonl": ("data.jsonl", lambda: "".join(json.dumps(r) + "\n" for r in good_rows()).encode()[:-30],
                        r"data.jsonl: line 4: not valid JSON"),
    "non-utf8 jsonl": ("data.jsonl",
                       lambda: "".join(json.dumps(r) + "\n" for r in good_rows()).encode().replace(b"number 3", b"\xff"),
                       r"data.jsonl: line 3: bytes that are not UTF-8"),
    "empty csv": ("data.csv", lambda: b"", r"data.csv: the file is empty"),
    "header-only csv": ("data.csv", lambda: b"id,question,options,answer\n", r"data.csv: holds no rows"),
    "empty jsonl": ("data.jsonl", lambda: b"\n", r"data.jsonl: holds no rows"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_files(tmp_path, case):
    name, data, error = FILE_CASES[case]
    path = tmp_path / name
    path.write_bytes(data())
    with pytest.raises(DataError, match=error):
        load(str(path))


def test_truncated_parquet(tmp_path):
    path = write(tmp_path, "parquet", good_rows())
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"data.parquet: not a readable Parquet file"):
        load(path)


def test_empty_labeled_split_fails_before_training(tmp_path):
    (tmp_path / "labeled.csv").write_text("question,gt,options,answer\n")
    write_csv(tmp_path / "test.csv", sentiment_rows(3))
    datamodule = SemiFTDataModule(task="fpb", root=str(tmp_path), labeled="labeled.csv", test="test.csv")
    with pytest.raises(DataError, match=r"labeled.csv: holds no rows"):
        datamodule.load_split("labeled")


def leaky(tmp_path, **kwargs):
    rows = sentiment_rows(12, seed=1)
    write_csv(tmp_path / "labeled.csv", rows[:6])
    write_csv(tmp_path / "unlabeled.csv", rows[6:10] + [{**rows[11], "question": "  " + rows[11]["question"].upper()}])
    write_csv(tmp_path / "test.csv", [rows[2], rows[10], rows[11]])
    return SemiFTDataModule(task="fpb", root=str(tmp_path), labeled="labeled.csv", unlabeled="unlabeled.csv",
                            test="test.csv", **kwargs)


def test_test_items_in_training_data_are_an_error_by_default(tmp_path):
    with pytest.raises(DataError, match=r"2 labeled/unlabeled item\(s\) also in the test data \(test leakage\); set "
                                        r"data.test_overlap to drop or allow:\n.*labeled.csv: row 3: field 'question': "
                                        r"the same item as .*test.csv row 1\n.*unlabeled.csv: row 5: field 'question'"):
        leaky(tmp_path).check_test_overlap()


def test_test_overlap_drop_lists_and_removes_the_items(tmp_path):
    datamodule = leaky(tmp_path, test_overlap="drop")
    with pytest.warns(UserWarning, match=r"dropped 2 item\(s\)[\s\S]*labeled.csv: row 3[\s\S]*unlabeled.csv: row 5"):
        datamodule.check_test_overlap()
    assert len(datamodule.load_split("labeled")) == 5 and len(datamodule.load_split("unlabeled")) == 4
    assert set(datamodule.unlabeled_gold) == {e.id for e in datamodule.load_split("unlabeled")}


def test_test_overlap_allow_warns(tmp_path):
    datamodule = leaky(tmp_path, test_overlap="allow")
    with pytest.warns(UserWarning, match=r"2 training-side item\(s\) equal a test item"):
        datamodule.check_test_overlap()
    assert len(datamodule.load_split("labeled")) == 6
    with pytest.raises(ValueError, match="data.test_overlap: must be one of error, drop, allow, got 'ignore'"):
        SemiFTDataModule(task="fpb", test_overlap="ignore")
