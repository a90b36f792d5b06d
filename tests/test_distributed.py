"""Under ddp_spawn with 2 CPU processes every rank builds the same training set, and the pseudo-labels equal those
of a single-process run with the same global batch."""

import json
from pathlib import Path

import lightning as L
import torch

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.semievol.propagation import InContextPropagation
from semift_lightning.semievol.selection import EntropySelection
from semift_lightning.semievol.views import View
from semift_lightning.semievol.voting import CollaborativeVoting


class TrainingSetWriter(L.Callback):
    """Writes, per rank, the ids of the training set each epoch starts with."""

    def __init__(self, folder):
        self.folder = str(folder)

    def on_train_epoch_start(self, trainer, pl_module):
        ids = [item["example"].id for item in trainer.train_dataloader.dataset]
        path = Path(self.folder) / f"epoch{trainer.current_epoch}_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(ids))


def run(tiny_model, root, out, devices, batch_size):
    L.seed_everything(7)
    module = SemiFTModule(model=tiny_model, optimizer={"lr": 0.01, "warmup_ratio": 0.0}, lora={"r": 8})
    datamodule = SemiFTDataModule(task="fpb", root=str(root), labeled="fpb/labeled.csv", unlabeled="fpb/unlabeled.csv",
                                  batch_size=batch_size, eval_batch_size=8, max_length=256)
    out.mkdir(parents=True)
    callbacks = [InContextPropagation(k=2), CollaborativeVoting(views=[View(k=2), View(adapter="base")]),
                 EntropySelection(keep_fraction=0.5), TrainingSetWriter(out),
                 L.pytorch.callbacks.ModelCheckpoint(out / "ckpt", save_last=True, save_top_k=0)]
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=devices, default_root_dir=out,
                        strategy="ddp_spawn" if devices > 1 else "auto", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    return torch.load(out / "ckpt" / "last.ckpt", weights_only=True)["SemiFTDataModule"]["pseudo_labels"]


def test_ddp_spawn_matches_single_process(tiny_model, fpb_like, tmp_path):
    single = run(tiny_model, fpb_like, tmp_path / "single", devices=1, batch_size=8)
    ddp = run(tiny_model, fpb_like, tmp_path / "ddp", devices=2, batch_size=4)
    rank0 = json.loads((tmp_path / "ddp" / "epoch1_rank0.json").read_text())
    rank1 = json.loads((tmp_path / "ddp" / "epoch1_rank1.json").read_text())
    assert rank0 == rank1 == json.loads((tmp_path / "single" / "epoch1_rank0.json").read_text())
    assert len(rank0) > 24  # labeled + selected pseudo-labels
    assert [(r["id"], r["answer"], r["selected"], r["view_answers"]) for r in ddp] == \
        [(r["id"], r["answer"], r["selected"], r["view_answers"]) for r in single]
    assert all(abs(a["uncertainty"] - b["uncertainty"]) < 1e-4 for a, b in zip(ddp, single))
