"""The callbacks in someone else's project: a LightningModule that is not ours, with its own training step,
exposing only the documented contract (tokenizer, hidden_states, option_log_probs, generate_with_nll)."""

import lightning as L
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from semift_lightning import SemiFTDataModule
from semift_lightning.callbacks import CollaborativeVoting, EntropySelection, InContextPropagation, View


class ForeignModule(L.LightningModule):
    """A user's own module: full-vocabulary loss from HF logits, SGD, no code of ours."""

    def __init__(self, path):
        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.pad_token = "<|endoftext|>"
        self.tokenizer.padding_side = "left"
        self.max_context_length = 256
        base = AutoModelForCausalLM.from_pretrained(path)
        self.model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).train()

    def hidden_states(self, input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True).hidden_states[-1]

    def option_log_probs(self, batch):
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=position_ids).logits[:, -1].float()
        scores = logits.log_softmax(-1)[:, self.trainer.datamodule.prompts.option_token_ids]
        counts = torch.tensor([len(e.options) for e in batch["examples"]])
        return scores.masked_fill(torch.arange(10)[None] >= counts[:, None], -float("inf"))

    def generate_with_nll(self, batch, **kwargs):
        raise NotImplementedError("this project only has closed-form tasks")

    def training_step(self, batch, batch_idx):
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


def test_callbacks_work_with_a_foreign_module(tiny_model, fpb_like, tmp_path):
    L.seed_everything(3)
    module = ForeignModule(tiny_model)
    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv",
                                  unlabeled="fpb/unlabeled.csv", batch_size=4, max_length=256)
    callbacks = [InContextPropagation(k=2), CollaborativeVoting(views=[View(k=1), View(adapter="base")]),
                 EntropySelection(keep_fraction=0.4)]
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, datamodule)
    selected = [r for r in datamodule.pseudo_labels if r["selected"]]
    assert len(datamodule.pseudo_labels) == 30 and 0 < len(selected) <= 12
    assert len(trainer.train_dataloader.dataset) == 24 + len(selected)


def test_a_module_missing_the_contract_gets_a_clear_error(tiny_model, fpb_like, tmp_path):
    class Bare(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.tokenizer = ForeignModule(tiny_model).tokenizer
            self.max_context_length = 256
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(torch.ones(1)).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv", max_length=256)
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        callbacks=[EntropySelection()])
    with pytest.raises(AttributeError, match="EntropySelection needs module.hidden_states, module.option_log_probs, "
                                             "module.generate_with_nll; see the plug-in contract"):
        trainer.fit(Bare(), datamodule)
