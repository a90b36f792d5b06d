"""The plug-in contract: a module without it gets an error naming what is missing. (A foreign module that has it
runs in notebooks/plug_in_callbacks.ipynb, executed by tests/test_notebooks.py.)"""

import lightning as L
import pytest
import torch
from transformers import AutoTokenizer

from semift_lightning import SemiFTDataModule
from semift_lightning.callbacks import EntropySelection


def test_a_module_missing_the_contract_gets_a_clear_error(tiny_model, fpb_like, tmp_path):
    class Bare(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.tokenizer = AutoTokenizer.from_pretrained(tiny_model)
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
