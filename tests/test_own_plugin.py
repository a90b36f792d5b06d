"""The SemiEvol callbacks in a Lightning project of one's own: a LightningModule AND a DataModule written against the
README's plug-in contract, neither subclassing ours (plain transformers + peft, prompts of their own). A fit with all
three callbacks is killed in the epoch after the round and resumed with ``ckpt_path="last"``; it trains on the same
pseudo-labels as an uninterrupted fit and recomputes no stage of the finished round."""

import json

import lightning as L
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from semift_lightning.semievol.context import RoundContext
from semift_lightning.semievol.propagation import InContextPropagation
from semift_lightning.semievol.restart import RestartStudent
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.selection import EntropySelection
from semift_lightning.semievol.stage import SemiEvolStage, run_round
from semift_lightning.semievol.store import PseudoLabelStore
from semift_lightning.semievol.views import View
from semift_lightning.semievol.voting import CollaborativeVoting
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.kinds import MultipleChoiceTask

LETTERS = "ABCDEFGHIJ"


class Polarity(MultipleChoiceTask):
    """A task of one's own: sentiment, asked as polarity (closed_form, parse, is_correct, proposed_answer and
    answer_key come from the base class)."""

    def user_content(self, example, candidates=()):
        return "Polarity of: " + super().user_content(example, candidates)


class OwnData(L.LightningDataModule):
    """Sentiment rows from JSON files; plain-text prompts; a ``PseudoLabelStore`` it delegates its state to."""

    def __init__(self, files: dict, tokenizer, seed: int = 0):
        super().__init__()
        self.files, self.tokenizer, self.seed = files, tokenizer, seed
        self.task = Polarity("polarity", "Answer with the letter of the polarity.", ("negative", "neutral", "positive"))
        self.store = PseudoLabelStore()
        self.trained_on = {}  # epoch -> the (id, answer) pairs its training set held (for the test)

    def load_split(self, name):
        rows = json.loads(open(self.files[name]).read()) if name in self.files else []
        options = ("negative", "neutral", "positive")
        examples = [Example(f"{name}{i}", row["text"], row["label"] if name != "unlabeled" else None, options)
                    for i, row in enumerate(rows)]
        if name == "unlabeled":
            self.store.pool_gold = {f"{name}{i}": row["label"] for i, row in enumerate(rows)}
        return examples

    def prompt(self, example, demonstrations=(), candidates=None):
        shown = "".join(f"Text: {d.question}\nAnswer: {d.answer}\n" for d in demonstrations)
        options = " ".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(example.options))
        hint = f"Candidates: {' / '.join(candidates)}\n" if candidates else ""
        return f"{shown}Text: {example.question}\nOptions: {options}\n{hint}Answer:"

    def batch(self, items):
        """Left-padded prompts (the answer letter after each when training) and the examples: the batch the
        callbacks hand to the module's option_log_probs / hidden_states."""
        width = max(len(ids) for ids, _ in items)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in items])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in items])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "examples": [e for _, e in items]}

    def encode(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][-200:]

    def pool_loader(self, split, examples, rank=0, world_size=1, demonstrations=None, candidates=None, embed=False):
        demonstrations, candidates = demonstrations or {}, candidates or {}
        items = [(self.encode(e.question if embed else self.prompt(e, demonstrations.get(e.id, ()),
                                                                   candidates.get(e.id))), e) for e in examples]
        return DataLoader(items[rank::world_size], batch_size=8, collate_fn=self.batch)

    def state_dict(self):
        return self.store.state_dict()

    def load_state_dict(self, state):
        self.store.load_state_dict(state)

    def train_dataloader(self):
        epoch = self.trainer.current_epoch
        pool = {e.id: e for e in self.load_split("unlabeled")}
        pseudo = [Example(r.id, pool[r.id].question, r.answer, pool[r.id].options)
                  for r in self.store.selected(epoch)]
        examples = self.load_split("labeled") + pseudo
        self.trained_on[epoch] = sorted((e.id, e.answer) for e in pseudo)
        items = [(self.encode(self.prompt(e) + " " + e.answer), e) for e in examples]
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        return DataLoader([items[i] for i in order], batch_size=4, collate_fn=self.batch)


class OwnModule(L.LightningModule):
    """A causal LM with a LoRA adapter; the contract's option_log_probs and hidden_states."""

    def __init__(self, path):
        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        base = AutoModelForCausalLM.from_pretrained(path)
        self.model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        self.letter_ids = [self.encode_letter(letter) for letter in LETTERS]

    def encode_letter(self, letter):
        return self.tokenizer(" " + letter, add_special_tokens=False)["input_ids"][-1]

    def forward_logits(self, input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # left padding: positions count real tokens
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    def option_log_probs(self, batch):
        logits = self.forward_logits(batch["input_ids"], batch["attention_mask"])[:, -1].float()
        scores = logits.log_softmax(-1)[:, self.letter_ids]
        counts = torch.tensor([len(e.options) for e in batch["examples"]], device=scores.device)
        return scores.masked_fill(torch.arange(len(LETTERS), device=scores.device) >= counts[:, None], -float("inf"))

    def hidden_states(self, input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         output_hidden_states=True)
        return out.hidden_states[-1]

    def training_step(self, batch, batch_idx):
        logits = self.forward_logits(batch["input_ids"], batch["attention_mask"])
        return torch.nn.functional.cross_entropy(logits[:, -2].float(), batch["input_ids"][:, -1])

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.01)

    def restart_adapter(self):
        """A fresh adapter: LoRA's own initialisation (B zero), and the optimizer's state cleared."""
        for name, weight in self.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.zeros_(weight)
        for optimizer in (self.trainer.optimizers if self._trainer else []):
            optimizer.state.clear()


class Killed(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (1, 2):
            raise RuntimeError("killed")


def recipe(warmup_epochs=1, restart=False):
    schedule = Schedule(warmup_epochs=warmup_epochs)
    return [InContextPropagation(k=2, schedule=schedule),
            CollaborativeVoting(views=[View(k=2), View(k=0)], schedule=schedule),
            EntropySelection(keep_fraction=0.5, per_answer=True, schedule=schedule),
            *([RestartStudent(schedule=schedule)] if restart else [])]


def write_files(folder):
    from semift_lightning.testing import sentiment_rows
    files = {}
    for split, count, seed in (("labeled", 24, 1), ("unlabeled", 30, 2)):
        rows = [{"text": row["question"], "label": row["answer"]} for row in sentiment_rows(count, seed)]
        files[split] = str(folder / f"{split}.json")
        (folder / f"{split}.json").write_text(json.dumps(rows))
    return files


def fit(tiny_model, files, folder, killed=False, resume=False, restart=False):
    L.seed_everything(5)
    module = OwnModule(tiny_model)
    data = OwnData(files, module.tokenizer)
    callbacks = [*recipe(restart=restart), L.pytorch.callbacks.ModelCheckpoint(folder / "ckpt", save_last=True),
                 *([Killed()] if killed else [])]
    trainer = L.Trainer(max_epochs=2, default_root_dir=folder, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, data, ckpt_path="last" if resume else None)
    return data


def test_own_module_and_own_datamodule_resume_after_the_round_on_the_same_pseudo_labels(tiny_model, tmp_path,
                                                                                       monkeypatch):
    files = write_files(tmp_path)
    whole = fit(tiny_model, files, tmp_path / "whole")
    assert whole.store.round == 1 and 0 < sum(r.selected for r in whole.store.records) < 30
    assert all(len(r.neighbours) == 2 and len(r.view_answers) == 2 for r in whole.store.records)

    with pytest.raises(RuntimeError, match="killed"):
        fit(tiny_model, files, tmp_path / "killed", killed=True)
    stages_run = []
    for stage in (InContextPropagation, CollaborativeVoting, EntropySelection):
        monkeypatch.setattr(stage, "run", lambda self, *a: stages_run.append(type(self).__name__))
    resumed = fit(tiny_model, files, tmp_path / "killed", resume=True)
    assert stages_run == []  # the finished round came back from the checkpoint: no stage ran again
    assert resumed.store.records == whole.store.records
    assert resumed.trained_on[1] == whole.trained_on[1] and resumed.trained_on[1]  # the same pseudo-labels trained


def test_own_task_and_own_store_holding_datamodule_run_a_round_without_a_trainer_and_in_a_fit_with_restart(
        tiny_model, tmp_path):
    files = write_files(tmp_path)
    L.seed_everything(5)
    module = OwnModule(tiny_model)
    data = OwnData(files, module.tokenizer)
    with torch.no_grad():
        for name, weight in module.model.named_parameters():
            if "lora_B" in name:
                weight.fill_(0.1)  # a trained adapter, which the restart resets
    metrics = run_round(module, data, recipe(restart=True), context=RoundContext(module.device, tmp_path / "alone"))
    assert data.store.round == 1 and data.store.stages_done == {"propagation": 1, "voting": 1, "selection": 1,
                                                                "restart": 1}
    assert 0 < metrics["selected"] == sum(r.selected for r in data.store.records) < 30
    assert "restart_seconds" in metrics and (tmp_path / "alone" / "pseudo_labels_round1.jsonl").exists()
    assert all(not weight.any() for name, weight in module.model.named_parameters() if "lora_B" in name)

    restarted = fit(tiny_model, files, tmp_path / "fit", restart=True)
    assert restarted.store.stages_done == {"propagation": 1, "voting": 1, "selection": 1, "restart": 1}
    assert restarted.trained_on[1] == sorted((r.id, r.answer) for r in restarted.store.records if r.selected)
    assert all(issubclass(kind, SemiEvolStage) for kind in (RestartStudent, EntropySelection))


def test_run_round_refuses_stages_out_of_order(tiny_model, tmp_path):
    module = OwnModule(tiny_model)
    data = OwnData(write_files(tmp_path), module.tokenizer)
    with pytest.raises(ValueError, match="got EntropySelection, CollaborativeVoting"):
        run_round(module, data, [EntropySelection(), CollaborativeVoting()])
    assert data.store.round == 0  # nothing ran
