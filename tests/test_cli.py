"""The semift command: shipped YAMLs parse, bad arguments are all reported before any model loads,
and a fit + test round trip on a tiny random Llama."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.cli import main, run

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("configs/*.yaml"), *REPO.glob("callbacks/*.yaml")])


def test_configs_are_shipped():
    assert "configs/demo.yaml" in SHIPPED and "configs/fpb.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_yaml_parses(path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", path, "--print_config"])
    assert exit_info.value.code == 0
    assert "model:" in capsys.readouterr().out


def test_print_config_shows_the_schedule_that_runs(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", "configs/fpb.yaml", "-c", "callbacks/semievol_light.yaml", "--semievol.warmup_epochs", "3",
              "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    schedules = [printed[key]["init_args"]["schedule"] for key in ("propagation", "voting", "selection")]
    assert schedules == [printed["semievol"]] * 3 and printed["semievol"]["warmup_epochs"] == 3
    assert printed["data"]["task"] == "fpb" and "config" not in printed


def test_all_bad_arguments_reported_at_once_before_loading(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr("semift_lightning.student.loading.ModelSource.resolve", no_loading)
    with pytest.raises(ValueError) as err:
        run(["fit", "--model.lora.r", "0", "--model.optimizer.lr", "-1", "--data.source", "x.csv",
              "--data.split_fractions", "[0.5, 0.3, 0.3]", "--data.batch_size", "0", "--data.test_overlap", "maybe",
              "-c", str(REPO / "callbacks" / "semievol.yaml"), "--selection.init_args.keep_fraction", "0",
              "--voting.init_args.views", "[]", "--propagation.init_args.k", "-1"])
    message = str(err.value)
    for fragment in ["model.lora.r: must be at least 1, got 0", "model.optimizer.lr: must be positive, got -1.0",
                     "data.split_fractions: fractions [0.5, 0.3, 0.3] sum to 1.1, not 1",
                     "data.batch_size: must be at least 1, got 0",
                     "data.test_overlap: must be one of error, drop, allow, got 'maybe'",
                     "selection.init_args.keep_fraction (θ): must be in (0, 1], got 0",
                     "voting.init_args.views: needs at least one view (n >= 1)",
                     "propagation.init_args.k: must be at least 0, got -1"]:
        assert fragment in message


def run_config(tmp_path, tiny_model, root, epochs=3):
    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": epochs, "precision": "32-true", "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "logs", "version": ""}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True,
                                                 "save_top_k": 0}}]},
        "model": {"model": tiny_model, "optimizer": {"lr": 0.01, "warmup_ratio": 0.0}, "lora": {"r": 8}},
        "data": {"task": "fpb", "root": str(root), "labeled": "fpb/labeled.csv", "test": "fpb/test.csv",
                 "batch_size": 4, "eval_batch_size": 5, "max_length": 256},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def read_summary(tmp_path):
    log = tmp_path / "runs" / "logs"
    return json.loads((log / "test_summary.json").read_text()), (log / "test_predictions.jsonl").read_text()


def test_fit_then_test_round_trip(tmp_path, tiny_model, fpb_like):
    config = run_config(tmp_path, tiny_model, fpb_like)
    main(["test", "-c", config])
    vanilla, _ = read_summary(tmp_path)
    main(["fit", "-c", config, "--trainer.log_every_n_steps", "7"])
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])
    assert checkpoint["global_step"] == 3 * 6
    main(["test", "-c", config, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    first, first_rows = read_summary(tmp_path)
    main(["test", "-c", config, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    second, second_rows = read_summary(tmp_path)
    assert first == second and first_rows == second_rows  # deterministic evaluation
    main(["predict", "-c", config, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    assert (tmp_path / "runs" / "logs" / "predictions.jsonl").read_text() == first_rows
    assert first["count"] == 12 and len(first_rows.splitlines()) == 12
    assert first["accuracy"] > vanilla["accuracy"]  # the synthetic task is learnable
    assert list((tmp_path / "runs" / "logs").glob("events.out.tfevents*"))
    saved = {path.name: yaml.safe_load(path.read_text()) for path in (tmp_path / "runs" / "logs").glob("*config.yaml")}
    assert sorted(saved) == ["config.yaml", "predict_config.yaml", "test_config.yaml"]
    assert saved["config.yaml"]["trainer"]["log_every_n_steps"] == 7  # the fit's, not overwritten by a later test


def test_export_and_merge(tmp_path, tiny_model, fpb_like):
    from transformers import AutoModelForCausalLM

    from semift_lightning import SemiFTModule
    module = SemiFTModule(model=tiny_model)
    module.configure_model()
    for name, param in module.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    ids = torch.tensor([[5, 6, 7, 8]])
    module.model.eval()
    with torch.no_grad():
        expected = module.model(input_ids=ids).logits
    module.export_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    module.export_adapter(tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    restored = SemiFTModule(model=tiny_model, adapter=str(tmp_path / "adapter"))
    restored.configure_model()
    restored.model.eval()
    with torch.no_grad():
        assert torch.allclose(restored.model(input_ids=ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize("recipe", ["callbacks/semievol.yaml", "callbacks/self_training.yaml"])
def test_recipe_composes_with_a_task_config(tmp_path, tiny_model, fpb_like, recipe):
    config = run_config(tmp_path, tiny_model, fpb_like, epochs=2)
    main(["fit", "-c", config, "-c", str(REPO / recipe), "--data.unlabeled", "fpb/unlabeled.csv"])
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    records = checkpoint["SemiFTDataModule"]["pseudo_labels"]
    assert len(records) == 30 and any(r["selected"] for r in records)
    assert len(records[0]["view_answers"]) == (4 if recipe.endswith("semievol.yaml") else 1)


def test_semievol_schedule_is_set_once_for_every_callback(tmp_path, tiny_model, fpb_like):
    from semift_lightning import SemiFTDataModule, SemiFTModule
    from semift_lightning.cli.command import SemiFTCLI
    from semift_lightning.semievol.stage import SemiEvolStage
    config = run_config(tmp_path, tiny_model, fpb_like)
    from semift_lightning.semievol.schedule import Schedule
    recipe = str(REPO / "callbacks" / "semievol_light.yaml")
    cli = SemiFTCLI(SemiFTModule, SemiFTDataModule, run=False,
                    args=["-c", config, "-c", recipe, "--semievol.warmup_epochs", "3", "--semievol.rounds", "2"])
    stages = [callback for callback in cli.trainer.callbacks if isinstance(callback, SemiEvolStage)]
    assert [stage.schedule for stage in stages] == [Schedule(warmup_epochs=3, refresh_every_n_epochs=1, rounds=2)] * 3
    with pytest.raises(ValueError, match=r"voting.init_args.schedule: the schedule is set once, for every SemiEvol "
                                         r"callback, with semievol"):
        SemiFTCLI(SemiFTModule, SemiFTDataModule, run=False,
                  args=["-c", config, "-c", recipe, "--voting.init_args.schedule.refresh_every_n_epochs", "2"])


def test_semievol_schedule_without_a_callback_is_an_error(monkeypatch):
    monkeypatch.setattr("semift_lightning.student.loading.ModelSource.resolve", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match=r"semievol: sets warmup_epochs, rounds but no SemiEvol callback is "
                                         r"configured \(propagation, voting, committee, alignment, selection, restart\)"):
        run(["fit", "--semievol.warmup_epochs", "3", "--semievol.rounds", "2"])


def test_a_bad_semievol_schedule_is_reported_once(tmp_path, tiny_model, fpb_like, monkeypatch):
    monkeypatch.setattr("semift_lightning.student.loading.ModelSource.resolve", lambda *a, **k: pytest.fail("model loaded"))
    config = run_config(tmp_path, tiny_model, fpb_like)
    with pytest.raises(ValueError) as error:
        run(["fit", "-c", config, "-c", str(REPO / "callbacks" / "semievol_light.yaml"),
             "--data.unlabeled", "fpb/unlabeled.csv", "--semievol.warmup_epochs", "-1",
             "--selection.init_args.keep_fraction", "2"])
    problems = str(error.value).splitlines()[1:]
    assert problems == ["- semievol.warmup_epochs: must be at least 0 (0: the first round runs when the fit starts), "
                        "got -1", "- selection.init_args.keep_fraction (θ): must be in (0, 1], got 2.0 (or 'validation': θ "
                        "from the student's validation accuracy)"]


def test_unwritable_log_folder_fails_before_the_model_loads(tmp_path, tiny_model, fpb_like, monkeypatch):
    config = run_config(tmp_path, tiny_model, fpb_like)
    (tmp_path / "runs").write_text("a file where the log folder should be")
    monkeypatch.setattr("semift_lightning.student.module.SemiFTModule.configure_model",
                        lambda self: pytest.fail("the model loaded before the output check"))
    with pytest.raises(OSError, match=r"the run's outputs cannot be written:\n- .*runs/logs: cannot write there"):
        run(["fit", "-c", config])


def test_no_optimizer_is_offered_that_would_see_no_lora_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    shown = capsys.readouterr().out
    assert "--model.optimizer.lr" in shown
    assert "\n  --optimizer " not in shown and "--lr_scheduler " not in shown


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.startswith("configs/")
                                  and "task" in (yaml.safe_load((REPO / p).read_text()).get("data") or {})])
def test_every_task_config_logs_the_learning_rate(path):
    callbacks = yaml.safe_load((REPO / path).read_text())["trainer"]["callbacks"]
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in [c["class_path"] for c in callbacks]


def test_argument_checks_take_their_defaults_from_the_signatures():
    import inspect

    from semift_lightning.semievol.propagation import InContextPropagation
    from semift_lightning.semievol.selection import EntropySelection
    from semift_lightning.semievol.voting import CollaborativeVoting
    for cls in (SemiFTDataModule, SemiFTModule, InContextPropagation, CollaborativeVoting, EntropySelection):
        stated = [name for name, parameter in inspect.signature(cls.argument_problems).parameters.items()
                  if parameter.default is not inspect.Parameter.empty]
        assert stated == [], f"{cls.__name__}.argument_problems states defaults again: {stated}"
        assert cls.argument_problems() == [], f"{cls.__name__}: its defaults are not valid arguments"
    # a default takes part in the check: answer_mix 'labeled' needs per_answer, whose default is False
    assert EntropySelection.argument_problems(answer_mix="labeled") == [
        "answer_mix: 'labeled' shares θ among answer options, so it needs per_answer=True"]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "callbacks").glob("*.yaml")))
def test_every_recipe_runs_its_round_on_a_numeric_task(tmp_path, tiny_model, recipe, monkeypatch, capsys):
    from semift_lightning.testing import write_csv
    (tmp_path / "data" / "convfinqa").mkdir(parents=True)
    for split, start, count in (("labeled", 0, 12), ("unlabeled", 100, 10), ("test", 200, 4)):
        write_csv(tmp_path / "data" / "convfinqa" / f"{split}.csv",
                  [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(start, start + count)])
    config = run_config(tmp_path, tiny_model, tmp_path / "data", epochs=2)
    args = ["fit", "-c", str(REPO / "configs" / "convfinqa.yaml"), "-c", config, "-c", str(REPO / "callbacks" / recipe),
            "--data.task", "convfinqa", "--data.labeled", "convfinqa/labeled.csv", "--data.unlabeled",
            "convfinqa/unlabeled.csv", "--data.test", "convfinqa/test.csv", "--model.max_new_tokens", "4",
            "--semievol.warmup_epochs", "1", "--semievol.rounds", "1"]
    if recipe == "committee.yaml":  # soft targets need option distributions: refused with the other arguments
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2 and "soft_pseudo_labels: needs a closed-form task" in capsys.readouterr().err
        return
    if recipe == "label_propagation.yaml":  # label propagation and the labeled answer mix need shared options
        monkeypatch.setattr("semift_lightning.student.loading.ModelSource.load_model",
                            lambda *a, **k: pytest.fail("the model loaded before the refusal"))
        with pytest.raises(ValueError, match="closed-form|share their options"):
            main(args)
        return
    main(args)
    records = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["SemiFTDataModule"]["pseudo_labels"]
    assert len(records) == 10 and all(r["selected"] is False for r in records if r["answer"] is None)
