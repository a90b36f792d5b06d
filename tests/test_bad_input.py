"""The bad-input matrix: every data source (CSV, JSON, JSONL, Parquet, datasets) against every kind of bad row or
file. Each case either loads correctly or fails before training with one error naming the file, row and field."""

import csv
import json
import re
import shutil
import warnings
from dataclasses import replace

import pytest
import torch

from semift_lightning import DataError, SemiFTDataModule
from semift_lightning.data.readers import read_rows, to_examples
from semift_lightning.tasks.registry import get_preset
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
    "one option": (edit(1, options=["red"], answer="A"), r"row 2: field 'options': needs 2 to 10 options, got 1"),
    "eleven options": (edit(1, options=[f"o{i}" for i in range(11)], answer="A"),
                       r"row 2: field 'options': needs 2 to 10 options, got 11"),
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
    assert set(datamodule.store.pool_gold) == {e.id for e in datamodule.load_split("unlabeled")}


def test_test_overlap_allow_warns(tmp_path):
    datamodule = leaky(tmp_path, test_overlap="allow")
    with pytest.warns(UserWarning, match=r"2 training-side item\(s\) equal a test item"):
        datamodule.check_test_overlap()
    assert len(datamodule.load_split("labeled")) == 6
    with pytest.raises(ValueError, match="data.test_overlap: must be one of error, drop, allow, got 'ignore'"):
        SemiFTDataModule(task="fpb", test_overlap="ignore")


# ----- the semift command: checkpoints, exit codes and messages --------------------------------------------------
def test_the_command_line_decides_the_model_and_a_lora_mismatch_is_named(tiny_model, fpb_like, tmp_path, capsys):
    from test_security import fitted_run

    from semift_lightning.cli import main
    config, last = fitted_run(tmp_path, tiny_model, fpb_like)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "-c", config, "--ckpt_path", str(last), "--model.lora.r", "4"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"model.lora.r: {last} holds an adapter made with 8, this run has 4" in error
    assert "Traceback" not in error and "semift: error: invalid arguments:\n- model.lora.r" in error
    moved = tmp_path / "moved_model"  # the checkpoint's model path is gone; the command line names where it is now
    shutil.copytree(tiny_model, moved)
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["model"] = str(tmp_path / "no_longer_here")
    torch.save(checkpoint, last)
    with pytest.warns(UserWarning, match="no_longer_here"):
        main(["test", "-c", config, "--ckpt_path", str(last), "--model.model", str(moved)])
    assert (tmp_path / "runs" / "logs" / "test_summary.json").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "text", "no_state_dict"])
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tiny_model, fpb_like, tmp_path, capsys, damage):
    from test_cli import run_config

    from semift_lightning.cli import main
    config = run_config(tmp_path, tiny_model, fpb_like)
    path = tmp_path / "damaged.ckpt"
    buffer = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1000)}}, buffer)
    content = {"empty": b"", "truncated": buffer.read_bytes()[:2000], "text": b"hello, not a checkpoint\n"}
    if damage == "no_state_dict":
        torch.save({"epoch": 3}, path)
    else:
        path.write_bytes(content[damage])
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "-c", config, "--ckpt_path", str(path)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    expected = "not a Lightning checkpoint" if damage == "no_state_dict" else "damaged or not a checkpoint"
    assert f"semift: error: {path}: {expected}" in error


def test_test_with_ckpt_path_last_and_no_checkpoint_is_an_error(tiny_model, fpb_like, tmp_path, capsys):
    from test_cli import run_config

    from semift_lightning.cli import main
    config = run_config(tmp_path, tiny_model, fpb_like)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "-c", config, "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    assert "ckpt_path=last: there is no last checkpoint in" in capsys.readouterr().err
    for path, message in (("best", "ckpt_path=best: a separate test"), (str(tmp_path), "a folder, not a checkpoint")):
        with pytest.raises(SystemExit):
            main(["test", "-c", config, "--ckpt_path", path])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "runs" / "logs" / "test_summary.json").exists()


def test_a_recipe_without_unlabeled_data_is_refused_before_training(tiny_model, fpb_like, tmp_path, monkeypatch):
    from pathlib import Path

    from test_cli import run_config

    from semift_lightning.cli.command import run
    monkeypatch.setattr("semift_lightning.student.loading.ModelSource.resolve", lambda *a, **k: pytest.fail("model loaded"))
    recipe = Path(__file__).resolve().parents[1] / "callbacks" / "self_training.yaml"
    with pytest.raises(ValueError, match="data.unlabeled: a SemiEvol recipe is configured .* but there is no "
                                         "unlabeled data"):
        run(["fit", "-c", run_config(tmp_path, tiny_model, fpb_like), "-c", str(recipe)])


def test_sigterm_ends_a_fit_with_a_failing_exit_status(tiny_model, fpb_like, tmp_path, capsys):
    import subprocess
    import sys

    from test_cli import run_config
    config = run_config(tmp_path, tiny_model, fpb_like, epochs=3)
    script = ("import os, signal, lightning as L\n"
              "from semift_lightning import cli\n"
              "class Term(L.Callback):\n"
              "    def on_train_batch_start(self, trainer, *args):\n"
              "        if trainer.global_step == 2: os.kill(os.getpid(), signal.SIGTERM)\n"
              f"cli.main(['fit', '-c', {config!r}, '--trainer.callbacks+=__main__.Term'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "stopped by SIGTERM before the end" in done.stderr


def test_predict_takes_data_without_answers(tiny_model, tmp_path):
    from test_cli import run_config

    from semift_lightning.cli import main
    from semift_lightning.testing import write_fpb_like
    root = write_fpb_like(tmp_path / "data")
    rows = sentiment_rows(6, seed=9)
    write_csv(root / "fpb" / "new.csv", [{k: v for k, v in row.items() if k not in ("answer", "gt")} for row in rows])
    write_csv(root / "fpb" / "blank.csv", [{**row, "answer": ""} for row in rows])
    config = run_config(tmp_path, tiny_model, root)
    for name in ("new.csv", "blank.csv"):
        main(["predict", "-c", config, "--data.test", f"fpb/{name}"])
        written = [json.loads(line) for line in (tmp_path / "runs" / "logs" / "predictions.jsonl").read_text().splitlines()]
        assert len(written) == 6 and all(r["gold"] is None and r["correct"] is None and r["prediction"] for r in written)
    write_csv(root / "fpb" / "bad.csv", [{**row, "answer": "Z"} for row in rows])  # a given answer is still checked
    with pytest.raises(SystemExit):
        main(["predict", "-c", config, "--data.test", "fpb/bad.csv"])


def test_one_column_override_keeps_the_rest_of_the_preset(tmp_path):
    rows = [{"question_id": f"q{i}", "category": "law", "question": f"Which colour is {i}?", "options": json.dumps(OPTIONS),
             "answer": "A"} for i in range(4)]
    path = write_csv(tmp_path / "mmlu_pro.csv", rows)
    datamodule = SemiFTDataModule(task="mmlu_pro", labeled=str(path), columns={"question": "question"})
    examples = datamodule.load_split("labeled")
    assert [e.id for e in examples] == ["q0", "q1", "q2", "q3"] and {e.category for e in examples} == {"law"}
    duplicated = write_csv(tmp_path / "dup.csv", [{**row, "question_id": "same"} for row in rows])
    with pytest.raises(DataError, match="duplicate id 'same'"):
        SemiFTDataModule(task="mmlu_pro", labeled=str(duplicated), columns={"question": "question"}).load_split("labeled")


def test_a_duplicate_csv_header_is_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text('question,options,answer,answer\n"Which?","[""a"", ""b""]",A,B\n')
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: the header names column\\(s\\) 'answer' more than once"):
        read_rows(str(path))


def test_a_log_folder_in_use_by_a_live_run_is_refused(tmp_path):
    import subprocess
    import sys

    from semift_lightning.errors import OutputError
    from semift_lightning.files import RunLock
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = RunLock(tmp_path)
        lock.path.write_text(f"{holder.pid} {lock.owner.split(' ', 1)[1]}\n")
        with pytest.raises(OutputError, match=f"{tmp_path} is in use by a live run \\(process {holder.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # the holder is gone: its lock is taken over
    assert lock.path.read_text().strip() == lock.owner
    lock.release()
    assert not lock.path.exists()


def test_truncated_model_weights_are_named(tiny_model, tmp_path):
    from semift_lightning.errors import ModelError
    from semift_lightning.student.loading import ModelSource
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match=f"the weights \\({re.escape(str(weights))}\\) are damaged or truncated"):
        ModelSource.resolve(str(folder)).load_model(torch.float32, 0)


def test_an_input_error_prints_one_message_and_exits_2(tiny_model, fpb_like, tmp_path, capsys, monkeypatch):
    from test_cli import run_config

    from semift_lightning.cli import main
    config = run_config(tmp_path, tiny_model, fpb_like)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", config, "--data.labeled", "fpb/missing.csv"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert error.strip().endswith(f"semift: error: {fpb_like / 'fpb' / 'missing.csv'}: no such file")
    monkeypatch.setenv("SEMIFT_TRACEBACK", "1")  # the traceback, when asked for
    with pytest.raises(DataError, match="missing.csv: no such file"):
        main(["fit", "-c", config, "--data.labeled", "fpb/missing.csv"])


def test_scientific_notation_scores_by_value():
    from semift_lightning.tasks.example import Example
    from semift_lightning.tasks.registry import get_preset
    task = get_preset("numeric").task
    gold = Example("1", "q", "1.5e3")
    assert task.is_correct("1500", gold) and not task.is_correct("3", gold)
    with pytest.raises(ValueError, match="holds no finite number"):
        task.canonical_answer("1e999", None)


def test_semift_refuses_a_log_folder_a_live_run_writes_into(tiny_model, fpb_like, tmp_path, capsys):
    import subprocess
    import sys

    from test_cli import run_config

    from semift_lightning.cli import main
    from semift_lightning.files import RunLock
    config = run_config(tmp_path, tiny_model, fpb_like)
    folder = tmp_path / "runs" / "logs"
    folder.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = RunLock(folder)
        lock.path.write_text(f"{other.pid} {lock.owner.split(' ', 1)[1]}\n")
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "-c", config])
        assert exit_info.value.code == 2 and f"{folder} is in use by a live run" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    main(["test", "-c", config])  # the other run is gone: its lock is taken over, and released at the end
    assert not lock.path.exists()


def test_a_checkpoint_keeps_local_model_and_adapter_paths_absolute(tiny_model, tmp_path, monkeypatch):
    from jsonargparse import Namespace

    from semift_lightning import SemiFTModule
    from semift_lightning.cli.command import checkpoint_conflicts
    trained = SemiFTModule(model=tiny_model, lora={"r": 8})
    trained.configure_model()
    trained.export_adapter(tmp_path / "adapter")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model, tmp_path / "model")
    module = SemiFTModule(model="model", adapter="adapter", lora={"r": 8})  # as typed: relative to this folder
    assert module.hparams["model"] == str(tmp_path / "model") and module.hparams["adapter"] == str(tmp_path / "adapter")
    checkpoint = {"hyper_parameters": dict(module.hparams)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same model typed relative again is not "another model"
        assert checkpoint_conflicts(checkpoint, Namespace(model="model", lora=module.hparams["lora"]), "x.ckpt") == []


def test_files_written_atomically_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    from semift_lightning.files import atomic_write_text
    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "test_predictions.jsonl", "{}\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, as an open() would make it; not mkstemp's 0600
