"""`semift demo` end to end on the tiny model: five runs, one table, the figure."""

import csv
from pathlib import Path

import pytest

from semift_lightning.cli import main
from semift_lightning.tasks.registry import SENTIMENT
from semift_lightning.testing import WORDS

REPO = Path(__file__).resolve().parents[1]


def write_reviews(path: Path, count: int, seed: int) -> Path:
    """Rows laid out like the drug-review TSV files: a review and its rating band."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["", "drugName", "review", "rating"])
        for i in range(count):
            label = SENTIMENT[i % 3]
            writer.writerow([f"{seed}{i}", "pill", f'"Review {seed}.{i}: it {" ".join(WORDS[label][:3])}."', label])
    return path


def test_the_demo_runs_vanilla_sft_and_semievol_and_prints_one_table(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the default config and recipe paths are the repository's
    train, test = write_reviews(tmp_path / "train.tsv", 60, 1), write_reviews(tmp_path / "test.tsv", 12, 2)
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--sft-epochs", "2", "--semievol-epochs", "1", "--",
          "--model.model", tiny_model, "--data.source", str(train), "--data.test", str(test),
          "--data.sizes.unlabeled", "30", "--data.split_fractions", "[0.4, 0.6, 0.0]",
          "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false"])
    printed = capsys.readouterr().out
    table = printed[printed.index("semift demo: vanilla → SFT → SemiEvol"):].splitlines()
    rows = {line.split()[0]: line for line in table if line.split() and line.split()[0] in ("vanilla", "SFT", "SemiEvol")}
    assert list(rows) == ["vanilla", "SFT", "SemiEvol"]
    assert rows["vanilla"].split()[1] == "0" and int(rows["SFT"].split()[1]) > 0
    assert int(rows["SemiEvol"].split()[1]) > int(rows["SFT"].split()[1])  # it continues from the SFT steps
    assert rows["SFT"].count("[") == 2 and rows["SemiEvol"].count("[") == 3  # accuracy and its paired differences
    assert any(word in rows["SemiEvol"] for word in ("better", "worse", "no difference"))
    round_line = next(line for line in table if line.startswith("pseudo-labeling round:"))
    assert "pool 30, selected " in round_line and "% right" in round_line
    assert "(12 test items" in printed and f"--logdir {out}" in printed
    assert (out / "demo.png").stat().st_size > 10_000 and f"figure: {out / 'demo.png'}" in printed
    assert (out / "semievol" / "logs" / "pseudo_labels_round1.jsonl").exists()
    assert (out / "sft_adapter" / "adapter_config.json").exists()


def test_the_demo_refuses_a_bad_epoch_count(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--sft-epochs", "0"])
    assert exit_info.value.code == 2 and "--sft-epochs: must be at least 1, got 0" in capsys.readouterr().err


def test_a_demo_config_without_a_checkpoint_callback_is_one_clear_error(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    train, test = write_reviews(tmp_path / "train.tsv", 30, 1), write_reviews(tmp_path / "test.tsv", 6, 2)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "demo"), "--sft-epochs", "1", "--", "--model.model", tiny_model,
              "--data.source", str(train), "--data.test", str(test), "--data.split_fractions", "[0.4, 0.6, 0.0]",
              "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]"])
    assert exit_info.value.code == 2
    assert "semift: error: semift demo: the fit kept no checkpoint to test and hand on" in capsys.readouterr().err
