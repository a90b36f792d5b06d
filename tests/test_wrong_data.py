"""Nothing trains on the wrong data: pseudo-labels are bound to their items' content, and a round's stages run only
in round order, with or without a Trainer."""

import csv
import re

import pytest
from test_semievol import full_recipe, make

from semift_lightning.semievol import CollaborativeVoting, EntropySelection, RoundContext, run_round


def rewrite_pool(path, change):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows = change(rows)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("change", ["reversed", "shortened"])
def test_a_resume_on_a_reordered_or_shortened_pool_never_trains_a_label_on_another_question(
        tiny_model, fpb_like, tmp_path, change):
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, full_recipe(), epochs=2)
    trainer.fit(module, datamodule)
    made = {r.item: r.answer for r in datamodule.store.records if r.selected}
    assert made and all(r.item for r in datamodule.store.records)
    pool = fpb_like / "fpb" / "unlabeled.csv"
    rewrite_pool(pool, (lambda rows: rows[::-1]) if change == "reversed" else (lambda rows: rows[:20]))
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, full_recipe(), epochs=3)
    expected = r"30 found their item under another id \(the rows moved\), 0 belong" if change == "reversed" else \
        r"0 of 30 found their item under another id \(the rows moved\), 10 belong to items that are gone"
    with pytest.warns(UserWarning, match=expected):
        trainer.fit(module, datamodule, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    trained = datamodule.pseudo_examples()
    assert trained and all(made[example.fingerprint] == example.answer for example in trained)
    current = {e.id: e.fingerprint for e in datamodule.load_split("unlabeled")}
    assert all(current[r.id] == r.item for r in datamodule.store.records)  # every record left is its item's own
    assert sizes.sizes[-1] == 24 + len(trained)


def test_run_round_applies_the_fits_order_and_contract_checks(tiny_model, fpb_like, tmp_path):
    module, datamodule, _, _ = make(tiny_model, fpb_like, tmp_path, [])
    module.configure_model()
    datamodule.setup("fit")
    with pytest.raises(ValueError, match="got EntropySelection, CollaborativeVoting"):
        run_round(module, datamodule, [EntropySelection(), CollaborativeVoting()], context=RoundContext(module.device))
    assert datamodule.store.round == 0 and not datamodule.store.records  # nothing ran
    with pytest.raises(AttributeError, match="CollaborativeVoting needs datamodule.task, datamodule.store"):
        run_round(module, object(), [CollaborativeVoting()])


@pytest.mark.parametrize("field, value, message", [
    ("selected", "false", "field 'selected': must be true or false, got 'false'"),
    ("uncertainty", "abc", "field 'uncertainty': must be a number >= 0, got 'abc'"),
    ("neighbours", [["x"]], "field 'neighbours': must be a list of [id, similarity] pairs"),
    ("round", True, "field 'round': must be a whole number >= 0, got True"),
    ("probs", [0.5, 2], "field 'probs': must be a list of probabilities"),
])
def test_a_record_field_of_the_wrong_type_is_named(field, value, message):
    from semift_lightning.errors import CheckpointError
    from semift_lightning.semievol import PseudoLabel
    with pytest.raises(CheckpointError) as error:
        PseudoLabel.from_dict({"id": "7", field: value}, "the checkpoint's pseudo-label 3")
    assert str(error.value).startswith("the checkpoint's pseudo-label 3: ") and message in str(error.value)


@pytest.mark.parametrize("line, message", [("[1, 2]", "not a pseudo-label record (a JSON object), got list"),
                                           ('"abc"', "not a pseudo-label record (a JSON object), got str")])
def test_a_round_file_line_that_is_not_a_record_is_named(tmp_path, line, message):
    from semift_lightning.errors import CheckpointError
    from semift_lightning.semievol.records import read_round
    path = tmp_path / "pseudo_labels_round1.jsonl"
    path.write_text('{"id": "1"}\n' + line + "\n")
    with pytest.raises(CheckpointError, match=re.escape(f"line 2: {message}")):
        read_round(path)


def test_a_store_of_the_wrong_shape_or_with_an_answer_outside_the_options_is_refused_or_dropped():
    from semift_lightning.errors import CheckpointError
    from semift_lightning.semievol import PseudoLabel, PseudoLabelStore
    from semift_lightning.tasks.example import Example
    with pytest.raises(CheckpointError, match="pseudo_labels: must be a list of records, got int"):
        PseudoLabelStore().load_state_dict({"pseudo_labels": 5})
    item = Example("1", "the company rose up", None, ("negative", "neutral", "positive"))
    store = PseudoLabelStore()
    store.records = [PseudoLabel("1", item=item.fingerprint, answer="Z", selected=True)]
    with pytest.warns(UserWarning, match="0 of 1 found their item under another id .*, 1 belong"):
        assert store.bind([item]) == 1
    assert store.selected() == []


def test_the_demo_refuses_a_non_empty_out_folder_without_overwrite(tmp_path, capsys):
    from semift_lightning.cli import main
    (tmp_path / "semievol" / "logs").mkdir(parents=True)
    (tmp_path / "semievol" / "logs" / "pseudo_labels_round9.jsonl").write_text("{}\n")  # an earlier run's round
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"semift: error: --out {tmp_path}: the folder is not empty" in error
    assert "--overwrite" in error


def test_a_second_fit_into_the_same_log_folder_is_refused_until_resumed_or_overwritten(tiny_model, fpb_like, tmp_path,
                                                                                      capsys):
    from test_cli import run_config

    from semift_lightning.cli import main
    config = run_config(tmp_path, tiny_model, fpb_like)
    main(["fit", "-c", config])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", config])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "an earlier fit left its checkpoints here (last.ckpt)" in error
    assert "--ckpt_path last" in error
    assert "--overwrite true" in error
    main(["fit", "-c", config, "--overwrite", "true"])  # starts over: the earlier files are gone


@pytest.mark.parametrize("text", ["3,14", "12,5", "0,25", "10,00", "1.2.3", "2024-01-15", "The answer is 3,14."])
def test_a_decimal_comma_a_version_or_a_date_is_no_number(text):
    from semift_lightning.tasks.parsing import parse_number
    assert parse_number(text) is None


@pytest.mark.parametrize("text, number", [("12 %", (12.0, True)), ("The answer is 1,234.5.", (1234.5, False)),
                                          ("1.5e3", (1500.0, False)), ("answer: -0.25", (-0.25, False))])
def test_the_number_grammar_reads_separators_exponents_and_percent(text, number):
    from semift_lightning.tasks.parsing import parse_number
    assert parse_number(text) == number


def test_a_gold_answer_with_a_decimal_comma_names_file_row_and_field(tmp_path):
    from semift_lightning import DataError
    from semift_lightning.data.readers import to_examples
    from semift_lightning.tasks.registry import get_preset
    numeric = get_preset("numeric")
    rows = [{"question": "What is pi?", "answer": "3.14"}, {"question": "And half of 25?", "answer": "12,5"}]
    with pytest.raises(DataError, match=r"gold.csv: row 2: field 'answer': '12,5' is not a number"):
        to_examples(rows, numeric.task, numeric.columns, "gold.csv")


@pytest.mark.parametrize("case, named", [
    ("a missing model", "model './nope': no such file or folder"),
    ("a model that is a csv", "a model file must be .gguf"),
    ("random bytes named .gguf", "junk.gguf"),
    ("'..' in a pypi: path", "the path inside the wheel may not contain '..'"),
    ("a second EntropySelection", "trainer.callbacks: EntropySelection is configured twice"),
    ("propagation.k above the labeled count", "propagation.k: k=50 is larger than the labeled set (24 items)"),
    ("lr 1e30", "non-finite training loss"),
    ("max_length below the prompt template", "fpb/labeled.csv: row 1: field 'question': the prompt without its "
                                              "question takes"),
])
def test_a_user_error_is_one_line_and_exit_2(tiny_model, fpb_like, tmp_path, capsys, case, named):
    import os

    from test_cli import run_config

    from semift_lightning.cli import main
    (tmp_path / "junk.gguf").write_bytes(os.urandom(4096))
    extra = {"a missing model": ["--model.model", "./nope"],
             "a model that is a csv": ["--model.model", str(fpb_like / "fpb" / "labeled.csv")],
             "random bytes named .gguf": ["--model.model", str(tmp_path / "junk.gguf")],
             "'..' in a pypi: path": ["--data.labeled", "pypi:foo==1.0/../x.csv"],
             "a second EntropySelection": ["--trainer.callbacks+=semift_lightning.semievol.EntropySelection",
                                           "--selection", "semift_lightning.semievol.EntropySelection",
                                           "--data.unlabeled", "fpb/unlabeled.csv"],
             "propagation.k above the labeled count": ["--propagation", "semift_lightning.semievol.InContextPropagation",
                                                       "--propagation.init_args.k", "50",
                                                       "--data.unlabeled", "fpb/unlabeled.csv"],
             "lr 1e30": ["--model.optimizer.lr", "1e30"],
             "max_length below the prompt template": ["--data.max_length", "5"]}[case]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", run_config(tmp_path, tiny_model, fpb_like, epochs=1), *extra])
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and error[-1].startswith("semift: error: ") and named in error[-1]
    assert not any("Traceback" in line for line in error)
