"""The plug-in contract: a module without it gets an error naming what is missing. (A foreign module that has it
runs in notebooks/plug_in_callbacks.ipynb, executed by tests/test_notebooks.py.)"""

import lightning as L
import pytest
import torch
from transformers import AutoTokenizer

from semift_lightning import SemiFTDataModule
from semift_lightning.semievol.selection import EntropySelection


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
    module = Bare()
    datamodule.connect(module.tokenizer, module.max_context_length)
    with pytest.raises(AttributeError, match="EntropySelection needs module.option_log_probs; see the plug-in "
                                             "contract"):  # a closed-form task without propagation
        trainer.fit(module, datamodule)



def absent(name):
    """A class attribute that ``hasattr`` reports missing."""
    def missing(self):
        raise AttributeError(name)
    return property(missing)


def test_a_closed_form_setup_without_propagation_needs_no_generation_or_hidden_states(tiny_model, fpb_like, tmp_path):
    from test_semievol import make

    from semift_lightning import SemiFTModule
    from semift_lightning.semievol.selection import EntropySelection
    from semift_lightning.semievol.views import View
    from semift_lightning.semievol.voting import CollaborativeVoting

    class ScoringOnly(SemiFTModule):
        generate_with_nll = absent("generate_with_nll")
        hidden_states = absent("hidden_states")

    _, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path,
                                     [CollaborativeVoting(views=[View()]), EntropySelection(per_answer=True)])
    module = ScoringOnly(model=tiny_model, optimizer={"lr": 0.01, "warmup_ratio": 0.0}, lora={"r": 8})
    datamodule.connect(module.tokenizer, module.max_context_length)
    module.share_prompt_prefix = True  # every pass continues a shared opening: no plain hidden_states pass
    trainer.fit(module, datamodule)
    assert datamodule.store.round == 1


def test_a_datamodule_whose_state_does_not_reach_checkpoints_is_refused(tiny_model, fpb_like, tmp_path):
    import lightning as L
    import pytest
    from test_semievol import make

    from semift_lightning import SemiFTDataModule
    from semift_lightning.semievol.selection import EntropySelection

    class Stateless(SemiFTDataModule):
        state_dict = L.LightningDataModule.state_dict
        labeled_answers = absent("labeled_answers")

    callbacks = [EntropySelection(per_answer=True, answer_mix="labeled")]
    module, _, trainer, _ = make(tiny_model, fpb_like, tmp_path, callbacks)
    stateless = Stateless(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv", unlabeled="fpb/unlabeled.csv")
    stateless.connect(module.tokenizer, module.max_context_length)
    with pytest.raises(AttributeError, match=r"needs datamodule.labeled_answers, datamodule.state_dict / "
                                             r"load_state_dict \(the pseudo-labels must live in checkpoints"):
        trainer.fit(module, stateless)


def test_our_module_and_datamodule_offer_every_protocol_of_the_contract(tiny_model, fpb_like):
    from semift_lightning import SemiFTDataModule, SemiFTModule
    from semift_lightning.semievol import contract

    module = SemiFTModule(model=tiny_model, lora={"r": 8})
    module.configure_model()
    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv")
    for protocol in (contract.OptionScorer, contract.Generator, contract.HiddenStates, contract.PeftStudent,
                     contract.RestartableStudent):
        assert contract.members(protocol) and contract.missing(module, protocol) == []
    for protocol in (contract.RoundData, contract.LabeledAnswers):
        assert contract.missing(datamodule, protocol) == []
    assert contract.members(contract.RoundData) == ["task", "store", "load_split", "pool_loader", "state_dict",
                                                    "load_state_dict"]
