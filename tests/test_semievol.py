"""The SemiEvol callbacks on a tiny random Llama: each alone, all together, the store through checkpoints,
refreshed training data, gold-column independence, bad arguments."""

import json

import lightning as L
import pytest
import torch

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.callbacks import CollaborativeVoting, EntropySelection, InContextPropagation, View

from conftest import sentiment_rows, write_csv


class DatasetSizes(L.Callback):
    """Records the training-set size each epoch sees."""

    def __init__(self):
        self.sizes = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.sizes.append(len(trainer.train_dataloader.dataset))


def make(tiny_model, root, tmp_path, callbacks, epochs=2, **data):
    L.seed_everything(7)
    module = SemiFTModule(model=tiny_model, optimizer={"lr": 0.01, "warmup_ratio": 0.0}, lora={"r": 8})
    datamodule = SemiFTDataModule(**{"task": "fpb", "root": str(root), "labeled": "fpb/labeled.csv",
                                     "unlabeled": "fpb/unlabeled.csv", "test": "fpb/test.csv", "batch_size": 4,
                                     "eval_batch_size": 8, "max_length": 256, **data})
    sizes = DatasetSizes()
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=L.pytorch.loggers.TensorBoardLogger(
        tmp_path, name="logs", version=""), enable_progress_bar=False, enable_model_summary=False,
        callbacks=[*callbacks, sizes, L.pytorch.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_last=True,
                                                                            save_top_k=0)])
    return module, datamodule, trainer, sizes


def full_recipe():
    return [InContextPropagation(k=2), CollaborativeVoting(views=[View(k=2), View(k=0), View(adapter="base", k=1)]),
            EntropySelection(keep_fraction=0.5)]


def test_full_recipe_refreshes_training_data_and_checkpoints_the_store(tiny_model, fpb_like, tmp_path):
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, full_recipe())
    trainer.fit(module, datamodule)
    records = datamodule.pseudo_labels
    assert len(records) == 30 and datamodule.pseudo_round == 1
    selected = [r for r in records if r["selected"]]
    assert 0 < len(selected) <= 15
    assert sizes.sizes == [24, 24 + len(selected)]  # the epoch after the round trains on labeled + selected
    assert all(len(r["view_answers"]) == 3 and 0 <= r["agreement"] <= 1 for r in records)
    threshold = max(r["uncertainty"] for r in selected)
    assert all(r["uncertainty"] > threshold for r in records if not r["selected"] and r["answer"])
    written = [json.loads(line) for line in (tmp_path / "logs" / "pseudo_labels_round1.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == [r["id"] for r in records]
    metrics = trainer.callback_metrics
    assert metrics["semievol/selected"] == len(selected) and "semievol/pseudo_label_accuracy" in metrics

    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    restored = SemiFTDataModule(task="fpb")
    restored.load_state_dict(checkpoint["SemiFTDataModule"])
    assert restored.pseudo_labels == records and restored.pseudo_round == 1


def test_resume_does_not_recompute_a_finished_round(tiny_model, fpb_like, tmp_path, monkeypatch):
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, full_recipe())
    trainer.fit(module, datamodule)
    before = datamodule.pseudo_labels
    calls = []
    monkeypatch.setattr("semift_lightning.callbacks.run_round", lambda *a: calls.append(a))
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path / "resumed", full_recipe(), epochs=3)
    trainer.fit(module, datamodule, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert calls == [] and datamodule.pseudo_labels == before
    assert sizes.sizes == [24 + sum(r["selected"] for r in before)]


def test_gold_column_of_unlabeled_data_only_moves_the_diagnostic(tiny_model, fpb_like, tmp_path):
    def run(root, out):
        module, datamodule, trainer, _ = make(tiny_model, root, out, full_recipe())
        trainer.fit(module, datamodule)
        return datamodule.pseudo_labels, float(trainer.callback_metrics["semievol/pseudo_label_accuracy"])

    clean, clean_accuracy = run(fpb_like, tmp_path / "clean")
    garbage = sentiment_rows(30, seed=2)
    for i, row in enumerate(garbage):
        row["answer"] = "ABC"[(i + 1) % 3]  # every gold answer wrong
        row["gt"] = "garbage"
    write_csv(fpb_like / "fpb" / "unlabeled.csv", garbage)
    noisy, noisy_accuracy = run(fpb_like, tmp_path / "garbage")
    assert noisy == clean
    assert noisy_accuracy != clean_accuracy


@pytest.mark.parametrize("callbacks", [
    lambda: [InContextPropagation(k=2)],
    lambda: [CollaborativeVoting(views=[View(), View(adapter="base")])],
    lambda: [EntropySelection(keep_fraction=0.3)],
], ids=["propagation", "voting", "selection"])
def test_each_callback_alone(tiny_model, fpb_like, tmp_path, callbacks):
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, callbacks())
    trainer.fit(module, datamodule)
    selected = sum(r["selected"] for r in datamodule.pseudo_labels)
    assert len(datamodule.pseudo_labels) == 30 and selected > 0
    assert sizes.sizes == [24, 24 + selected]
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and module.training


def test_empty_unlabeled_set_warns_and_trains_on_labeled(tiny_model, fpb_like, tmp_path):
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, full_recipe(), unlabeled=None)
    with pytest.warns(UserWarning, match="no unlabeled data"):
        trainer.fit(module, datamodule)
    assert sizes.sizes == [24, 24]


def test_bad_arguments_are_clear(tiny_model, fpb_like, tmp_path):
    with pytest.raises(ValueError, match=r"keep_fraction \(θ\) must be in \(0, 1\], got 1.5"):
        EntropySelection(keep_fraction=1.5)
    with pytest.raises(ValueError, match=r"views: needs at least one view \(n >= 1\)"):
        CollaborativeVoting(views=[])
    with pytest.raises(ValueError, match=r"views\[1\].adapter: '/nowhere' is neither"):
        CollaborativeVoting(views=[View(), View(adapter="/nowhere")])
    with pytest.raises(ValueError, match="warmup_epochs: must be at least 1"):
        InContextPropagation(warmup_epochs=0)
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, [InContextPropagation(k=25)])
    with pytest.raises(ValueError, match=r"k=25 is larger than the labeled set \(24 items\)"):
        trainer.fit(module, datamodule)
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, [CollaborativeVoting(views=[View(k=2)])])
    with pytest.raises(ValueError, match="no InContextPropagation callback"):
        trainer.fit(module, datamodule)


def test_every_candidate_rejected_is_logged_and_training_goes_on(tiny_model, fpb_like, tmp_path, monkeypatch):
    def no_answers(self, batch):
        return torch.full((len(batch["examples"]), 10), -float("inf"))
    monkeypatch.setattr(SemiFTModule, "option_log_probs", no_answers)
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, full_recipe())
    with pytest.warns(UserWarning, match="every candidate was rejected"):
        trainer.fit(module, datamodule)
    assert all(r["answer"] is None and not r["selected"] for r in datamodule.pseudo_labels)
    assert sizes.sizes == [24, 24] and trainer.current_epoch == 2
