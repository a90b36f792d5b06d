"""The semi-supervised method options on the tiny model: a validation split carved from the labeled data, a
validation loss, the label-propagation view, distribution voting and restarting the student after a round."""

import math

import lightning as L
import pytest
import torch
from test_semievol import adapter_weights, make

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.data.splits import SplitSizes, carve_validation
from semift_lightning.semievol.combine import label_propagation_vote, mean_vote
from semift_lightning.semievol.propagation import InContextPropagation
from semift_lightning.semievol.records import Vote
from semift_lightning.semievol.restart import RestartStudent
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.selection import EntropySelection
from semift_lightning.semievol.views import View
from semift_lightning.semievol.voting import CollaborativeVoting
from semift_lightning.tasks.example import Example


def examples(answers):
    return [Example(str(i), f"q{i}", answer, ["x", "y", "z"]) for i, answer in enumerate(answers)]


def test_validation_carve_keeps_every_answer_and_is_seeded():
    items = examples("A" * 14 + "B" * 6 + "C" * 3)
    train, val = carve_validation(items, 0.2, seed=3, by_answer=True)
    assert sorted(e.answer for e in val) == ["A", "A", "A", "B", "C"]  # 20% of each answer, at least one
    train_ids, val_ids = {e.id for e in train}, {e.id for e in val}
    assert train_ids | val_ids == {e.id for e in items} and not train_ids & val_ids
    assert carve_validation(items, 0.2, seed=3, by_answer=True) == (train, val)
    assert carve_validation(items, 0.2, seed=4, by_answer=True)[1] != val
    lone = examples("AAAAB")  # an answer with one item stays in training
    assert all(e.answer == "A" for e in carve_validation(lone, 0.5, seed=0, by_answer=True)[1])


def test_datamodule_carves_validation_from_the_labeled_budget(fpb_like):
    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv", sizes=SplitSizes(labeled=15),
                                  val_fraction=0.2, seed=1)
    train, val = datamodule.load_split("labeled"), datamodule.load_split("val")
    assert len(train) + len(val) == 15 and len(val) == 3 and {e.answer for e in val} == {"A", "B", "C"}
    assert not {e.id for e in train} & {e.id for e in val}
    with pytest.raises(ValueError, match="data.val_fraction: carves validation out of the labeled data"):
        SemiFTDataModule(task="fpb", labeled="a.csv", val="b.csv", val_fraction=0.2)
    with pytest.raises(ValueError, match=r"data.val_fraction: must be in \[0, 1\), got 1"):
        SemiFTDataModule(task="fpb", labeled="a.csv", val_fraction=1)


def test_validation_logs_a_loss_beside_accuracy(tiny_model, fpb_like, tmp_path):
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, [], epochs=1, val_fraction=0.25)
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    loss = trainer.callback_metrics["val/fpb/loss"]
    assert math.isfinite(float(loss)) and float(loss) > 0 and "val/fpb/acc" in trainer.callback_metrics


def test_label_propagation_vote_is_the_similarity_weighted_answer_histogram():
    a, b = examples("AB")
    vote = label_propagation_vote([(a, 0.9), (b, 0.3), (a, -0.5)], option_count=3)
    assert vote.answer == "A" and vote.probs == pytest.approx([0.75, 0.25, 0.0])
    assert 0 < vote.uncertainty < 1
    assert label_propagation_vote([(a, -0.1)], 3).answer is None  # nothing similar: no answer


def test_mean_log_probs_lets_a_view_rule_an_option_out():
    votes = [Vote("A", probs=[0.9, 0.1, 0.0]), Vote("C", probs=[0.0, 0.3, 0.7])]
    assert mean_vote(votes).answer == "A" and mean_vote(votes).probs == pytest.approx([0.45, 0.2, 0.35])
    assert mean_vote(votes, log=True).answer == "B"  # the only option neither view rules out


def lp_recipe(**selection):
    return [InContextPropagation(k=3),
            CollaborativeVoting(views=[View(), View(kind="label_propagation", k=3)], self_justification=False,
                                combine="mean_probs"),
            EntropySelection(keep_fraction=0.5, per_answer=True, **selection)]


def test_label_propagation_and_distribution_voting_make_a_round(tiny_model, fpb_like, tmp_path):
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, lp_recipe())
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    records = datamodule.store.records
    assert len(records) == 30 and all(len(r.view_answers) == 2 for r in records)
    assert all(r.view_answers[1] in "ABC" for r in records)  # every item has labeled neighbours
    assert not any(r.justified for r in records)
    assert sizes.sizes[1] == 24 + sum(r.selected for r in records)
    metrics = trainer.callback_metrics
    assert "semievol/view1_accuracy" in metrics and "semievol/view2_accuracy" in metrics


def test_restart_student_trains_the_epochs_after_the_round_from_a_fresh_adapter(tiny_model, fpb_like, tmp_path):
    class AtRound(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.weights = adapter_weights(pl_module)
                self.state = len(trainer.optimizers[0].state)

    probe = AtRound()
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, [*lp_recipe(), RestartStudent(schedule=Schedule(warmup_epochs=1)), probe])
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    lora_b = [w for name, w in probe.weights.items() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(w) == 0 for w in lora_b)  # as a new adapter starts
    assert probe.state == 0 and module.schedule_start == pytest.approx(0.5)
    before, after = sizes.learning_rates[0], sizes.learning_rates[1]
    assert after[0] > before[-1] and after[0] == pytest.approx(0.01, rel=0.2)  # the schedule runs again
    assert max(after) <= 0.01 and all(a > b > 0 for a, b in zip(after, after[1:]))
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["schedule_start"] == pytest.approx(0.5)


def test_the_learning_rate_never_exceeds_its_peak_on_a_run_shorter_than_its_warmup(tiny_model, fpb_like, tmp_path):
    L.seed_everything(7)
    module = SemiFTModule(model=tiny_model, optimizer={"lr": 0.01, "warmup_ratio": 0.5}, lora={"r": 8})
    _, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, [], epochs=1)
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    assert max(sizes.learning_rates[0]) <= 0.01 + 1e-12


@pytest.mark.parametrize("arguments, message", [
    ({"combine": "median"}, "combine: must be one of vote, mean_probs, mean_log_probs, got 'median'"),
    ({"combine": "mean_probs"}, "combine: 'mean_probs' decides disputes from the views' distributions; set "
                                "self_justification: false"),
    ({"views": [View(kind="label_propagation")], "self_justification": False},
     "views[0].k: a label-propagation view needs at least one neighbour, got 0"),
    ({"views": [View(kind="knn", k=2)]}, "views[0].kind: must be 'prompt' or 'label_propagation', got 'knn'"),
])
def test_bad_voting_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        CollaborativeVoting(**arguments)


def test_soft_pseudo_labels_train_on_the_rounds_distribution(tiny_model, fpb_like, tmp_path):
    class Probe(L.Callback):
        soft_batches, checked = 0, False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if "soft_target" not in batch:
                return
            self.soft_batches += 1
            rows = batch["has_soft_target"]
            assert rows.any() and torch.allclose(batch["soft_target"][rows].sum(-1), torch.ones(int(rows.sum())))
            if not self.checked:  # a one-hot target on the item's letter is the plain loss of that letter
                self.checked = True
                letters = [e.answer for e in batch["examples"]]
                one_hot = torch.zeros_like(batch["soft_target"])
                for i, letter in enumerate(letters):
                    one_hot[i, "ABCDEFGHIJ".index(letter)] = 1.0
                with torch.no_grad():
                    plain = pl_module.training_step({k: v for k, v in batch.items()
                                                     if k not in ("soft_target", "has_soft_target")}, 0)
                    hot = pl_module.training_step({**batch, "soft_target": one_hot,
                                                   "has_soft_target": torch.ones_like(rows)}, 0)
                assert torch.allclose(plain, hot, atol=1e-5)

    probe = Probe()
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, [*lp_recipe(), probe],
                                          soft_pseudo_labels=True)
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    selected = [r for r in datamodule.store.records if r.selected]
    assert selected and all(len(r.probs) == 3 for r in selected)
    assert probe.soft_batches > 0 and probe.checked
    with pytest.raises(ValueError, match="data.soft_pseudo_labels: needs a closed-form task"):
        SemiFTDataModule(task="numeric", labeled="a.csv", soft_pseudo_labels=True)


def test_early_stopping_waits_for_the_epoch_that_trains_on_a_round(tiny_model, fpb_like, tmp_path):
    stop_at_once = L.pytorch.callbacks.EarlyStopping(monitor="val/fpb/acc", mode="max", patience=0,
                                                     stopping_threshold=0.0)  # reached at the first check
    callbacks = [CollaborativeVoting(views=[View()]), EntropySelection(per_answer=True), stop_at_once]
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, callbacks, epochs=4, val_fraction=0.25)
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    assert datamodule.store.round == 1 and trainer.current_epoch == 2  # epochs 0 (the round's) and 1 ran
    assert len(sizes.sizes) == 2 and sizes.sizes[1] > sizes.sizes[0]


def test_theta_from_the_students_validation_accuracy(tiny_model, fpb_like, tmp_path):
    selection = EntropySelection(keep_fraction="validation")
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, [CollaborativeVoting(views=[View()]),
                                                                           selection], val_fraction=0.25)
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    theta = float(trainer.callback_metrics["semievol/keep_fraction"])
    val = datamodule.load_split("val")
    assert any(theta == pytest.approx(max(k, 1) / len(val)) for k in range(len(val) + 1))
    answered = [r for r in datamodule.store.records if r.answer]
    assert sum(r.selected for r in answered) >= math.ceil(theta * len(answered) - 1e-4)
    with pytest.raises(ValueError, match=r"keep_fraction \(θ\): must be in \(0, 1\], got 'val' \(or 'validation'"):
        EntropySelection(keep_fraction="val")
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, [selection])
    with pytest.raises(ValueError, match="keep_fraction='validation' needs validation data"):
        trainer.fit(module, datamodule)


def test_a_tokenizer_without_a_chat_template_trains_evaluates_and_labels_in_the_plain_format(tiny_model, fpb_like,
                                                                                             tmp_path):
    import shutil

    from transformers import AutoTokenizer
    base = tmp_path / "base_model"
    shutil.copytree(tiny_model, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    module, datamodule, trainer, sizes = make(str(base), fpb_like, tmp_path,
                                              [CollaborativeVoting(views=[View()]), EntropySelection(per_answer=True)])
    assert module.tokenizer.chat_template is None
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    prompts = datamodule.prompts
    assert prompts.prompt_format == "plain" and datamodule.store.round == 1 and sizes.sizes[1] > 24
    example = datamodule.load_split("labeled")[0]
    text = module.tokenizer.decode(prompts.encode(example, datamodule.load_split("labeled")[1:2]).prompt_ids)
    assert text.endswith("Answer with the letter of the sentiment.\nAnswer:") and "<|im_start|>" not in text
    assert text.count("\nAnswer:") == 2  # the demonstration's answer block, then the item's
    trainer.test(module, datamodule)
    assert 0 <= float(trainer.callback_metrics["test/fpb/acc"]) <= 1
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["SemiFTDataModule"]["prompt_layout"]["prompt_format"] == "plain"
    from semift_lightning.data.prompts import PromptBuilder
    with pytest.raises(ValueError, match="data.prompt_format: 'chat', but the tokenizer has no chat template"):
        PromptBuilder(module.tokenizer, datamodule.task, 256, prompt_format="chat")
    with pytest.raises(ValueError, match="data.prompt_format: must be chat or plain or unset, got 'raw'"):
        SemiFTDataModule(task="fpb", labeled="x.csv", prompt_format="raw")
