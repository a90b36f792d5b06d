"""The committee on the tiny model: prompt patterns as data, members trained inside the fit beside the student's
adapter, saved and reused, weighted; distillation at a temperature; input noise on pseudo-labeled items."""

import json
from collections import Counter
from dataclasses import replace

import pytest
import torch
from test_cli import REPO, main, run_config
from test_semievol import make

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.analysis.stats import read_predictions
from semift_lightning.data.patterns import PromptPattern
from semift_lightning.errors import DataError
from semift_lightning.semievol import CommitteeVoting, Member, PriorAlignment, RoundContext, Schedule, run_round
from semift_lightning.semievol.committee import previous_generation
from semift_lightning.semievol.records import PseudoLabel
from semift_lightning.tasks.kinds import MultipleChoiceTask
from semift_lightning.testing import sentiment_rows, write_csv

PATTERNS = [PromptPattern("chat_qfirst"), PromptPattern("plain_qlast", prompt_format="plain", question_last=True)]


def committee(tmp_path, **arguments):
    members = [Member(pattern, seed=seed) for seed, pattern in enumerate(PATTERNS)]
    return CommitteeVoting(members=members, steps=4, members_dir=str(tmp_path / "members"),
                           schedule=Schedule(warmup_epochs=0), **arguments)


def student(module):
    return {name: p.detach().clone() for name, p in module.model.named_parameters() if p.requires_grad}


def round_alone(tiny_model, fpb_like, tmp_path, stage, **data):
    module, datamodule, _, _ = make(tiny_model, fpb_like, tmp_path, [], **data)
    module.configure_model()
    metrics = run_round(module, datamodule, [stage], context=RoundContext(module.device, tmp_path / "alone"))
    return module, datamodule, metrics


def test_a_pattern_renders_the_task_another_way(tiny_model, fpb_like, tmp_path):
    _, datamodule, _, _ = make(tiny_model, fpb_like, tmp_path, [])
    example = datamodule.load_split("labeled")[0]
    default = datamodule.prompts.tokenizer.decode(datamodule.prompts.encode(example).prompt_ids)
    asked = datamodule.in_pattern(PromptPattern("plain_qlast", prompt_format="plain", question_last=True,
                                                instruction="Which sentiment? Give its letter."))
    text = asked.prompts.tokenizer.decode(asked.prompts.encode(example).prompt_ids)
    assert "<|im_start|>" in default and "<|im_start|>" not in text and text.endswith("Answer:")
    assert text.index("Options:") < text.index(example.question) and "Which sentiment? Give its letter." in text
    assert datamodule.task.question_last is False and asked.store is datamodule.store  # the DataModule is unchanged
    with pytest.raises(ValueError, match=r"members\[0\]\.pattern\.prompt_format: must be chat or plain"):
        CommitteeVoting(members=[Member(PromptPattern("x", prompt_format="markdown"))])


def test_members_train_beside_the_student_and_their_softened_mean_is_every_item_s_target(tiny_model, fpb_like,
                                                                                           tmp_path):
    module, datamodule, _, _ = make(tiny_model, fpb_like, tmp_path, [])
    module.configure_model()
    before = student(module)
    metrics = run_round(module, datamodule, [committee(tmp_path)], context=RoundContext(module.device))
    assert all(torch.equal(before[name], weight) for name, weight in student(module).items())  # the student's own
    assert list(module.model.peft_config) == ["default"] and module.model.active_adapter == "default"
    folders = sorted(p.name for p in (tmp_path / "members").iterdir())
    assert [name.rsplit("-", 1)[0] for name in folders] == ["member1-chat_qfirst-seed0-round1",
                                                            "member2-plain_qlast-seed1-round1"]
    assert all(json.loads((tmp_path / "members" / f / "adapter_config.json").read_text())["r"] == 8 for f in folders)
    records = datamodule.store.records
    assert len(records) == 30 and all(len(r.view_answers) == 2 and len(r.probs) == 3 for r in records)
    assert all(r.selected for r in records)  # no selection stage: every answered item trains
    assert {"view1_accuracy", "view2_accuracy", "pseudo_label_accuracy", "committee_seconds"} <= set(metrics)


def test_a_softer_temperature_keeps_the_answers_and_raises_the_uncertainty(tiny_model, fpb_like, tmp_path):
    _, sharp, _ = round_alone(tiny_model, fpb_like, tmp_path / "a", committee(tmp_path / "a", temperature=1.0))
    _, soft, _ = round_alone(tiny_model, fpb_like, tmp_path / "b", committee(tmp_path / "b", temperature=4.0))
    pairs = list(zip(sharp.store.records, soft.store.records))
    assert all(a.answer == b.answer for a, b in pairs)
    assert all(b.uncertainty >= a.uncertainty - 1e-9 for a, b in pairs) and any(
        b.uncertainty > a.uncertainty for a, b in pairs)


def test_labeled_accuracy_weights_members_by_their_pattern_before_training(tiny_model, fpb_like, tmp_path):
    _, _, metrics = round_alone(tiny_model, fpb_like, tmp_path, committee(tmp_path, weighting="labeled_accuracy"))
    weights = [metrics["member1_weight"], metrics["member2_weight"]]
    assert all(0 < weight <= 1 for weight in weights)


def test_prior_alignment_re_weights_the_committee_s_soft_targets(tiny_model, fpb_like, tmp_path):
    module, datamodule, _, _ = make(tiny_model, fpb_like, tmp_path, [])
    module.configure_model()
    stages = [committee(tmp_path), PriorAlignment(pool_weight=0.0, steps=50, schedule=Schedule(warmup_epochs=0))]
    metrics = run_round(module, datamodule, stages, context=RoundContext(module.device))
    shares = Counter(datamodule.labeled_answers())
    prior = torch.tensor([shares[letter] + 1.0 for letter in "ABC"], dtype=torch.float64)
    probs = torch.tensor([r.probs for r in datamodule.store.records], dtype=torch.float64)
    assert torch.allclose(probs.mean(0), prior / prior.sum(), atol=1e-3)
    assert abs(metrics["prior_after_B"] - float(prior[1] / prior.sum())) < 1e-3
    assert datamodule.store.stages_done == {"committee": 1, "alignment": 1}


def test_a_round_run_again_reuses_the_saved_members(tiny_model, fpb_like, tmp_path, monkeypatch):
    _, first, _ = round_alone(tiny_model, fpb_like, tmp_path / "one", committee(tmp_path))
    monkeypatch.setattr("semift_lightning.semievol.members.train",
                        lambda *a, **k: pytest.fail("a saved member was trained again"))
    _, again, _ = round_alone(tiny_model, fpb_like, tmp_path / "two", committee(tmp_path))
    assert [(r.answer, r.probs) for r in first.store.records] == [(r.answer, r.probs) for r in again.store.records]
    with pytest.raises(pytest.fail.Exception):  # another step count is another member: trained, not reused
        round_alone(tiny_model, fpb_like, tmp_path / "three", CommitteeVoting(
            members=[Member(PATTERNS[0])], steps=5, members_dir=str(tmp_path / "members")))
    rows = (fpb_like / "fpb" / "labeled.csv").read_text().splitlines()
    (fpb_like / "fpb" / "labeled.csv").write_text("\n".join(rows[:-1]) + "\n")  # other labeled data
    with pytest.raises(pytest.fail.Exception):  # a member taught on other labels is never reused
        round_alone(tiny_model, fpb_like, tmp_path / "four", committee(tmp_path))


def test_a_second_round_trains_new_members_on_the_previous_committee_s_surest_labels(tiny_model, fpb_like, tmp_path):
    stage = committee(tmp_path, previous_labels=0.5)
    module, datamodule, first = round_alone(tiny_model, fpb_like, tmp_path, stage)
    assert first["previous_labels"] == 0  # the first generation learns from the labeled items alone
    chosen = previous_generation(datamodule, 2, 0.5, datamodule.load_split("unlabeled"))
    records = {r.id: r for r in datamodule.store.records}
    given = Counter(r.answer for r in records.values())
    # the labeled items' shares, a third of 15 each, where the committee gave an answer that often
    assert Counter(e.answer for e in chosen) == {answer: min(5, given[answer]) for answer in "ABC" if given[answer]}
    for answer in "ABC":
        kept = [records[e.id].uncertainty for e in chosen if e.answer == answer]
        rest = [r.uncertainty for r in records.values() if r.answer == answer and r.id not in {e.id for e in chosen}]
        assert not rest or max(kept) <= min(rest)  # the surest of each answer
    second = run_round(module, datamodule, [stage], index=2, context=RoundContext(module.device))
    assert second["previous_labels"] == len(chosen) and datamodule.store.round == 2
    assert len([p for p in (tmp_path / "members").iterdir() if "-round2-" in p.name]) == 2


def test_a_saved_adapter_serves_as_a_member(tiny_model, fpb_like, tmp_path, monkeypatch):
    module, _, _ = round_alone(tiny_model, fpb_like, tmp_path / "one", committee(tmp_path))
    folder = next((tmp_path / "members").iterdir())
    monkeypatch.setattr("semift_lightning.semievol.members.train", lambda *a, **k: pytest.fail("trained"))
    _, data, metrics = round_alone(tiny_model, fpb_like, tmp_path / "two", CommitteeVoting(
        members=[Member(PATTERNS[0], adapter=str(folder))], schedule=Schedule(warmup_epochs=0)))
    assert len(data.store.records) == 30 and "view1_accuracy" in metrics


def test_a_fit_distils_the_committee_into_the_student_and_checkpoints_only_its_adapter(tiny_model, fpb_like,
                                                                                        tmp_path):
    module, datamodule, trainer, sizes = make(tiny_model, fpb_like, tmp_path, [committee(tmp_path)], epochs=1,
                                              soft_pseudo_labels=True)
    trainer.fit(module, datamodule)
    assert sizes.sizes == [24 + 30]  # the first epoch already trains on every pool item
    assert datamodule.store.stages_done == {"committee": 1}
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert saved and all(".default." in key for key in saved)  # the members' adapters stay in their folder


def test_distillation_scales_the_soft_loss_by_the_temperature_squared(tiny_model, fpb_like, tmp_path):
    module, datamodule, _, _ = make(tiny_model, fpb_like, tmp_path, [], soft_pseudo_labels=True)
    module.configure_model()
    pool = datamodule.load_split("unlabeled")[:4]
    datamodule.store.write([PseudoLabel(e.id, answer="A", probs=[0.6, 0.3, 0.1], selected=True, item=e.fingerprint)
                            for e in pool], 1, "voting")
    items = [item for item in datamodule.train_items() if item["pseudo"]]
    batch = datamodule._loader(items, len(items)).__iter__().__next__()
    letters, tokens = batch["option_token_ids"], (batch["labels"] != -100).sum()
    losses = {}
    with torch.no_grad():
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        first = (batch["labels"] != -100).long().argmax(1)  # each row's answer letter; its logits come one before
        answer_logits = logits[torch.arange(len(first)), first - 1]
        for temperature in (1.0, 2.0):
            module.distillation_temperature = temperature
            losses[temperature] = module.answer_loss(batch)
    others = {}  # what the tokens after the answer letter add, which no temperature changes
    for temperature, loss in losses.items():
        soft = (batch["soft_target"] * (answer_logits / temperature).log_softmax(-1)[:, letters]).sum()
        others[temperature] = loss * tokens + soft * temperature ** 2
    assert torch.allclose(others[1.0], others[2.0], atol=1e-3) and not torch.allclose(losses[1.0], losses[2.0])


def test_word_dropout_noises_pseudo_labeled_questions_only(tiny_model, fpb_like, tmp_path):
    module, datamodule, _, _ = make(tiny_model, fpb_like, tmp_path, [], pseudo_word_dropout=0.5)
    pool = datamodule.load_split("unlabeled")
    datamodule.store.write([PseudoLabel(e.id, answer="A", selected=True, item=e.fingerprint) for e in pool], 1,
                           "voting")
    items = datamodule.train_items()
    labeled = [item["example"].question for item in items if not item["pseudo"]]
    noised = {item["example"].id: item["example"].question for item in items if item["pseudo"]}
    assert labeled == [e.question for e in datamodule.load_split("labeled")]  # gold items stay clean
    assert sum(noised[e.id] != e.question for e in pool) > len(pool) // 2
    assert all(set(noised[e.id].split()) <= set(e.question.split()) for e in pool)
    with pytest.raises(ValueError, match=r"data.pseudo_word_dropout: must be in \[0, 1\), got 1"):
        SemiFTDataModule(task="fpb", pseudo_word_dropout=1)
    with pytest.raises(ValueError, match="model.distillation_temperature: must be positive, got 0"):
        SemiFTModule(model=tiny_model, distillation_temperature=0)


def test_the_committee_recipe_runs_from_the_command_line(tiny_model, fpb_like, tmp_path):
    config = run_config(tmp_path, tiny_model, fpb_like)
    main(["fit", "-c", config, "-c", str(REPO / "callbacks" / "committee.yaml"), "--data.unlabeled",
          "fpb/unlabeled.csv", "--committee.init_args.steps", "2", "--trainer.max_epochs", "1"])
    members = sorted(p.name.split("-")[1] for p in (tmp_path / "runs" / "logs" / "members").iterdir())
    assert members == ["chat_qfirst", "chat_qlast", "plain_qlast"]
    records = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["SemiFTDataModule"]["pseudo_labels"]
    assert len(records) == 30 and all(r["selected"] and len(r["probs"]) == 3 for r in records)


def test_a_round_has_either_voting_or_a_committee(tiny_model, fpb_like, tmp_path):
    from semift_lightning.semievol import CollaborativeVoting
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, [CollaborativeVoting(), committee(tmp_path)])
    with pytest.raises(ValueError, match="CollaborativeVoting or CommitteeVoting before PriorAlignment"):
        trainer.fit(module, datamodule)


def test_a_member_can_answer_with_the_option_s_own_word(tiny_model, tmp_path):
    words = ("fell", "held", "rose")  # single tokens of the tiny tokenizer
    rows = [{**row, "options": json.dumps(words)} for row in sentiment_rows(30)]
    for split, part in (("labeled", rows[:12]), ("unlabeled", rows[12:24]), ("test", rows[24:])):
        write_csv(tmp_path / f"{split}.csv", part)
    task = MultipleChoiceTask("moves", "Answer with the letter of the move.", words)
    module, datamodule, _, _ = make(tiny_model, tmp_path, tmp_path / "run", [], task=task, labeled="labeled.csv",
                                    unlabeled="unlabeled.csv", test="test.csv")
    asked = datamodule.in_pattern(PromptPattern("words", verbalizer="word"))
    example = asked.load_split("labeled")[0]
    encoded = asked.prompts.encode(example, with_target=True)
    said = asked.prompts.tokenizer.decode(encoded.target_ids)
    assert said.startswith(words["ABC".index(example.answer)]) and "Options: fell, held, rose" in \
        asked.prompts.tokenizer.decode(encoded.prompt_ids)
    module.configure_model()
    run_round(module, datamodule, [CommitteeVoting(members=[Member(PromptPattern("words", verbalizer="word"))],
                                                   steps=2)], context=RoundContext(module.device))
    assert all(r.answer in "ABC" and len(r.probs) == 3 for r in datamodule.store.records)
    other = asked.load_split("labeled")[1]
    with pytest.raises(DataError, match=r"labeled.csv: row 2: its options \['a', 'b'\]: answering with option words"):
        asked.encode("labeled", [replace(other, options=("a", "b"))], with_target=True)
    with pytest.raises(ValueError, match="needs a multiple-choice task with fixed options; 'fpb_free'"):
        PromptPattern("w", verbalizer="word").applied_to(MultipleChoiceTask("fpb_free"))
    student, own, trainer, _ = make(tiny_model, tmp_path, tmp_path / "said", [], epochs=1, task=task,
                                    labeled="labeled.csv", unlabeled="unlabeled.csv", test="test.csv", verbalizer="word")
    assert own.prompts.encode(example, with_target=True).target_ids == encoded.target_ids  # the student says words
    assert own.prompt_layout["verbalizer"] == "word"  # checkpoints record it
    trainer.fit(student, own)
    trainer.test(student, own)
    predictions = read_predictions(tmp_path / "said" / "logs" / "test_predictions.jsonl")
    assert len(predictions) == 6 and all(row["prediction"] in "ABC" for row in predictions)
    _, letters, tester, _ = make(tiny_model, tmp_path, tmp_path / "tested", [], task=task, labeled="labeled.csv",
                                 test="test.csv")  # no verbalizer given: letters, until the checkpoint says words
    tester.test(student, letters, ckpt_path=tmp_path / "said" / "ckpt" / "last.ckpt")
    assert letters.prompt_layout == own.prompt_layout
    tested = read_predictions(tmp_path / "tested" / "logs" / "test_predictions.jsonl")
    assert [row["prediction"] for row in tested] == [row["prediction"] for row in predictions]
