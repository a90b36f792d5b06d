"""The benchmark scripts run end to end on a tiny model, so they cannot rot between real runs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def run(script: str, *args: str, cwd: Path) -> str:
    """The script's stdout; it must succeed and leave nothing in its working folder."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(cwd.iterdir()), f"{script} left files in its working folder: {list(cwd.iterdir())}"
    return result.stdout


def semift(*args: str, cwd: Path) -> str:
    """``semift ARGS``' stdout; it must succeed and leave nothing in its working folder."""
    result = subprocess.run([sys.executable, "-c", "from semift_lightning.cli import main; main()", *args],
                            capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(cwd.iterdir()), f"semift {args[0]} left files in its working folder: {list(cwd.iterdir())}"
    return result.stdout


def test_training_speed_benchmark_prints_both_loops_and_their_ratio(tiny_model, fpb_like, tmp_path):
    (tmp_path / "cwd").mkdir()
    out = run("speed/speed_training.py", "--data-root", str(fpb_like), "--model", tiny_model, "--batch-size", "4",
              "--gradient-checkpointing", cwd=tmp_path / "cwd")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ours") or line.startswith("| plain")]
    assert [row[1].strip() for row in rows] == ["ours", "ours, checkpointed", "plain"]
    assert all(int(row[2]) == 6 and float(row[4]) > 0 and float(row[7]) > 0 for row in rows)  # 24 items / 4
    assert "speed ratio (ours / plain, tokens per second): " in out and "GEMM peaks: " in out
    assert "question first" in out and "gradient checkpointing: " in out


def test_training_speed_benchmark_compares_quantized_bases(fpb_like, tmp_path):
    pytest.importorskip("bitsandbytes")
    from semift_lightning.testing import make_tiny_model
    wide = make_tiny_model(tmp_path / "wide", hidden_size=64)  # bitsandbytes' blocks of 64
    (tmp_path / "cwd").mkdir()
    out = run("speed/speed_training.py", "--data-root", str(fpb_like), "--model", str(wide), "--batch-size", "4",
              "--quantization", "--max-steps", "3", cwd=tmp_path / "cwd")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ours")]
    assert [row[1].strip() for row in rows] == ["ours", "ours, nf4", "ours, int8"]
    assert all(int(row[2]) == 3 and float(row[9]) > 0 for row in rows)
    weights = [float(row[9]) for row in rows]
    assert weights[1] < weights[0] and "ours, nf4 against ours: " in out


def test_model_flops_count_every_decoder_call_and_every_position_the_head_sees(tiny_model):
    sys.path.insert(0, str(BENCHMARKS / "speed"))
    from measure import ModelFlops
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    flops = ModelFlops(model)
    ids = torch.ones(2, 5, dtype=torch.long)
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
    decoder_call = (flops.linear_per_position + flops.attention_per_key * 5) * 10
    assert flops.total == decoder_call + flops.head_per_position * 10
    model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)  # the head at one position per item
    assert flops.total == 2 * decoder_call + flops.head_per_position * 12


def test_pseudo_labeling_speed_benchmark_prints_both_rates(tiny_model, fpb_like, tmp_path):
    (tmp_path / "cwd").mkdir()
    out = run("speed/speed_pseudo_labeling.py", "--data-root", str(fpb_like), "--model", tiny_model, "--items", "8",
              "--max-new-tokens", "4", "--question-last", cwd=tmp_path / "cwd")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ours") or line.startswith("| reference")]
    assert [row[1].strip() for row in rows] == ["ours", "reference"]
    assert all(int(row[2]) == 8 and 0 <= float(row[5]) <= 1 and float(row[6]) > 0 for row in rows)
    assert "speed ratio (ours / reference): " in out and "question last" in out


def test_compare_prints_intervals_paired_differences_and_answer_pile_ups(tmp_path):
    gold = ["A"] * 12 + ["B"] * 8
    def predictions(name, predicted):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": str(i), "prediction": p, "gold": g, "correct": p == g}) + "\n"
                                for i, (p, g) in enumerate(zip(predicted, gold))))
        return str(path)
    baseline = predictions("sft", gold[:10] + ["B", "B"] + ["A"] * 8)  # right on the first 10 only
    always_a = predictions("collapsed", ["A"] * 20)
    (tmp_path / "cwd").mkdir()
    out = semift("compare", baseline, always_a, cwd=tmp_path / "cwd").splitlines()
    low, high = map(float, re.search(r"sft.jsonl: accuracy 0.5000 \[(\S+), (\S+)\] \(baseline\)$", out[1]).groups())
    assert 0.2 < low < 0.5 < high < 0.8
    assert out[2] == ("  most common prediction 'A' on 18 of 20 items (90.0%); answering 'A' to every item would "
                      "score 0.6000")
    # 2 of 20 items differ: resamples without them (about 12%) put zero inside the interval
    assert re.search(r"collapsed.jsonl: accuracy 0.6000 \[.*\]; paired difference \+0.1000 \[\+0.0000, \+0.\d+\]: "
                     r"no difference$", out[3])
    assert out[4] == ("  most common prediction 'A' on 20 of 20 items (100.0%); answering 'A' to every item would "
                      "score 0.6000")


def test_figures_are_drawn_from_run_files(fpb_like, tmp_path):
    predictions = tmp_path / "test_predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": str(i), "option_probs": [0.2, 0.5, 0.3], "correct": i % 2 == 0})
                                   + "\n" for i in range(12)))
    pseudo = tmp_path / "pseudo_labels_round1.jsonl"
    pseudo.write_text("".join(json.dumps({"id": str(i + 1), "answer": "ABC"[i % 3], "uncertainty": i / 30,
                                          "unanimous": True, "selected": False}) + "\n" for i in range(30)))
    (tmp_path / "cwd").mkdir()
    out = run("experiments/figures.py", "--data-root", str(fpb_like), "--test", f"SFT={predictions}", "--round", f"round1={pseudo}",
              "--theta-test", f"0.7={predictions}", "--theta-test", f"0.3={predictions}", "--theta-test",
              f"1 view:1.0={predictions}", "--theta-reference", f"SFT={predictions}",
              "--out", str(tmp_path / "figures"), cwd=tmp_path / "cwd")
    assert "SFT: test accuracy 0.5000" in out
    low, high = map(float, re.search(r"test accuracy, SemiEvol, θ=0.3: 0.5000 \[(\S+), (\S+)\]\n", out).groups())
    assert 0.1 < low < 0.5 < high < 0.9
    assert "test accuracy, SemiEvol, θ=0.7: 0.5000 [" in out.split("θ=0.3")[1]  # in the order of θ
    assert "test accuracy, 1 view, θ=1.0: 0.5000 [" in out
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "kept_accuracy_vs_theta.png", "pseudo_label_accuracy_by_uncertainty.png", "test_accuracy_vs_theta.png",
        "test_uncertainty.png"]


def test_round_report_scores_each_view_the_disputes_and_the_selection(fpb_like, tmp_path):
    from semift_lightning.analysis.report import benchmark_data, unlabeled_gold
    gold = unlabeled_gold(benchmark_data(str(fpb_like), "fpb"))
    wrong = {answer: "ABC"[("ABC".index(answer) + 1) % 3] for answer in "ABC"}
    records = [{"id": key, "view_answers": [answer, wrong[answer] if i < 10 else answer], "unanimous": i >= 10,
                "disputed": i < 10, "justified": i < 10, "answer": answer if i % 2 else wrong[answer],
                "selected": i >= 20} for i, (key, answer) in enumerate(sorted(gold.items()))]
    pseudo = tmp_path / "pseudo_labels_round1.jsonl"
    pseudo.write_text("".join(json.dumps(record) + "\n" for record in records))
    (tmp_path / "cwd").mkdir()
    out = semift("report", "--data-root", str(fpb_like), str(pseudo), cwd=tmp_path / "cwd")
    assert "pool: 30 items, pseudo-label accuracy 50.0%, all views agree on 66.7%" in out
    assert "view 1: accuracy 100.0%" in out and "view 2: accuracy 66.7%" in out
    assert "disputed: 10 items; right on them: view 1 100.0%, view 2 0.0%; final answer (self-justification) 50.0%" in out
    assert "selected: 10 (33.3%), accuracy 50.0%" in out
    config = tmp_path / "config.yaml"  # as a run saves it: the gold comes from its data section
    config.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, "data": {
        "task": "fpb", "root": str(fpb_like), "unlabeled": "fpb/unlabeled.csv", "sizes": {"unlabeled": None}}}))
    assert semift("report", "--config", str(config), str(pseudo), cwd=tmp_path / "cwd") == out


def semievol_fit(tiny_model, fpb_like, tmp_path, epochs=1, **fit):
    """A one-round SemiEvol fit of the tiny model that keeps every epoch's checkpoint in ``tmp_path/ckpt``; returns
    the training-set size of each epoch."""
    import lightning as L

    from semift_lightning import SemiFTDataModule, SemiFTModule
    from semift_lightning.semievol.propagation import InContextPropagation
    from semift_lightning.semievol.selection import EntropySelection
    from semift_lightning.semievol.views import View
    from semift_lightning.semievol.voting import CollaborativeVoting
    L.seed_everything(7)
    module = SemiFTModule(model=tiny_model, optimizer={"lr": 0.01}, lora={"r": 8})
    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv",
                                  unlabeled="fpb/unlabeled.csv", batch_size=4, eval_batch_size=8, max_length=256)
    stages = [InContextPropagation(k=2), CollaborativeVoting(views=[View(k=2), View(k=0), View(adapter="base")]),
              EntropySelection(keep_fraction=0.5, per_answer=True)]
    sizes = []
    record_size = L.pytorch.callbacks.LambdaCallback(
        on_train_epoch_start=lambda trainer, _: sizes.append(len(trainer.train_dataloader.dataset)))
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1)
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=L.pytorch.loggers.TensorBoardLogger(
        tmp_path, name="logs", version=""), enable_progress_bar=False, callbacks=[*stages, record_size, checkpoints])
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule, **fit)
    return sizes


def test_justification_order_replays_a_rounds_disputes_with_its_checkpoint(tiny_model, fpb_like, tmp_path):
    semievol_fit(tiny_model, fpb_like, tmp_path)
    (tmp_path / "cwd").mkdir()
    out = run("experiments/justification_order.py", "--data-root", str(fpb_like), "--checkpoint",
              str(tmp_path / "ckpt" / "epoch=0-step=6.ckpt"), str(tmp_path / "logs" / "pseudo_labels_round1.jsonl"),
              cwd=tmp_path / "cwd")
    disputed = int(re.search(r": 30 items, (\d+) disputed", out).group(1))
    assert disputed > 0
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    assert list(rows)[1:] == ["view order", "option order", "reverse option order", "averaged over rotations"]
    assert rows["averaged over rotations"][1].strip() == "100.0%"  # the round's own way, the round's own weights
    kept = [int(row[4].split()[0]) for name, row in rows.items() if name != "candidates listed"]
    assert kept and all(0 < k < 30 for k in kept)


def test_reselected_checkpoint_resumes_on_the_new_selection(tiny_model, fpb_like, tmp_path):
    semievol_fit(tiny_model, fpb_like, tmp_path)
    round_end = tmp_path / "ckpt" / "epoch=0-step=6.ckpt"
    original = round_end.read_bytes()
    (tmp_path / "cwd").mkdir()
    kept = {}
    for theta in ("1.0", "0.25"):
        out = run("experiments/reselect_checkpoint.py", "--data-root", str(fpb_like), "--keep-fraction", theta, str(round_end),
                  str(tmp_path / f"theta{theta}.ckpt"), cwd=tmp_path / "cwd")
        before, kept[theta] = map(int, re.search(r"30 items, (\d+) selected; .* (\d+) selected$", out).groups())
    assert round_end.read_bytes() == original
    answered = [r for r in torch.load(round_end, weights_only=True)["SemiFTDataModule"]["pseudo_labels"]
                if r["answer"] is not None]
    assert kept["1.0"] == len(answered) > before > kept["0.25"] > 0
    sizes = semievol_fit(tiny_model, fpb_like, tmp_path / "resumed", epochs=2, ckpt_path=tmp_path / "theta1.0.ckpt")
    assert sizes == [24 + kept["1.0"]]  # the finished round is not recomputed; its new selection trains


def test_semievol_vs_sft_runs_the_four_runs_and_matches_semievols_steps(tiny_model, fpb_like, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 7,
        "trainer": {"max_epochs": 1, "precision": "32-true", "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "logs", "version": ""}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True, "save_top_k": 1}}]},
        "model": {"model": tiny_model, "optimizer": {"lr": 0.01}, "lora": {"r": 8}},
        "data": {"task": "fpb", "labeled": "fpb/labeled.csv", "unlabeled": "fpb/unlabeled.csv",
                 "test": "fpb/test.csv", "batch_size": 4, "eval_batch_size": 5, "max_length": 256}}))
    (tmp_path / "cwd").mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COMMON_ARGS": "--data.sizes.test 10"}
    result = subprocess.run(["bash", str(BENCHMARKS / "experiments/semievol_vs_sft.sh"), str(config), str(fpb_like),
                             str(REPO / "callbacks" / "semievol_light.yaml"), "--trainer.max_epochs=2",
                             "--semievol.warmup_epochs=1"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path / "cwd", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("vanilla", "sft", "semievol", "sft_equal_steps"):
        assert re.search(rf"^tiny_{run}: test accuracy [01]\.\d{{4}} on 10 items$", result.stdout, re.M), run
    assert "round: {" in result.stdout and "seconds: vanilla test " in result.stdout
    steps = int(re.search(r"SemiEvol optimizer steps: (\d+)", result.stdout).group(1))
    assert steps > 6  # 6 warm-up steps on the 24 labeled items, then labeled + selected
    equal = tmp_path / "cwd" / "runs" / "tiny_sft_equal_steps" / "logs" / "checkpoints" / "last.ckpt"
    assert torch.load(equal, weights_only=True)["global_step"] == steps


def test_gpu_run_runs_both_speed_benchmarks_and_the_fpb_pair_from_any_folder(tiny_model, fpb_like, tmp_path):
    model = tmp_path / "my models" / "tiny"  # a path with a space reaches every run whole
    model.parent.mkdir()
    model.symlink_to(tiny_model, target_is_directory=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COMMON_ARGS": "--model.lora.r 8"}
    result = subprocess.run(["bash", str(BENCHMARKS / "speed/gpu_run.sh"), str(fpb_like), str(model), "8"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "speed ratio (ours / plain, tokens per second): " in out and "speed ratio (ours / reference): " in out
    for run in ("vanilla", "sft", "semievol", "sft_equal_steps"):
        assert re.search(rf"^fpb_{run}: test accuracy [01]\.\d{{4}} on 12 items$", out, re.M), run
    assert re.search(r"^\| reference \| 8 \|", out, re.M) and "== done: " in out
    for size in ("batch size 8,", "batch size 64,", "batches of 16,", "batches of 256,"):  # each benchmark at both
        assert size in out, size
    assert out.count("MFU (of the best GEMM peak)") == 4
    adapter = json.loads((tmp_path / "runs" / "fpb_sft_adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8  # the SFT run's adapter, exported for the pseudo-labeling benchmark


def test_learning_curve_runs_every_method_and_reports_pooled_intervals(tiny_model, fpb_like, tmp_path):
    (tmp_path / "cwd").mkdir()
    out, runs = tmp_path / "out", tmp_path / "runs"
    run("experiments/learning_curve.py", "--data-root", str(fpb_like), "--model", tiny_model, "--precision", "32-true",
        "--budgets", "12", "--seeds", "0", "--sft-steps", "4", "--post-round-epochs", "1", "--out", str(out),
        "--runs", str(runs), cwd=tmp_path / "cwd")
    summary = json.loads((out / "summary.json").read_text())
    chosen = summary["fpb_3pct_chosen"]
    assert chosen in ("self_training", "lp_mean_restart")
    names = {p.name for p in out.iterdir()}
    for method in ("sft", "self_training", "lp_mean_restart", "semievol", "sft_equal_steps"):
        assert f"fpb_3pct_seed0_{method}.test_predictions.jsonl" in names
    assert "fpb_3pct_seed0_semievol.pseudo_labels_round1.jsonl" in names
    sft, picked = summary["fpb_3pct_seed0_sft"], summary[f"fpb_3pct_seed0_{chosen}"]
    assert sft["chosen"] in sft["curve"] and picked["curve"] == [picked["chosen"]]  # the round, then one epoch
    assert summary["fpb_3pct_seed0_sft_equal_steps"]["steps"] == picked["steps"] == sft["steps"] + picked["chosen"]["step"]
    assert "selected" in picked["round"] and not list(runs.glob("*/logs/checkpoints/*.ckpt"))
    report = run("experiments/learning_curve_report.py", "--results", str(out), "--figure", str(tmp_path / "fig" / "curve.png"),
                 "--resamples", "200", cwd=tmp_path / "cwd")
    rows = [line for line in report.splitlines() if line.startswith("| 3% |")]
    assert len(rows) == 5 and any(f"semievol ({chosen})" in row for row in rows)
    assert (tmp_path / "fig" / "curve.png").stat().st_size > 0


def test_committee_dev_report_scores_members_the_committee_and_its_prior_alignment(tmp_path):
    seed = tmp_path / "out" / "seed100"
    seed.mkdir(parents=True)
    (seed / "budget.csv").write_text("question,answer\n" + "".join(f"q{i},{'ABC'[i % 3]}\n" for i in range(45)))
    gold = ["A", "B", "C", "B"]
    members = {"chat_qfirst": [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.8, 0.1]],
               "plain_qlast": [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1]]}
    for name, probs in members.items():
        (seed / name / "logs").mkdir(parents=True)
        (seed / name / "logs" / "test_predictions.jsonl").write_text("".join(
            json.dumps({"id": str(i), "gold": g, "option_probs": p, "prediction": "ABC"[p.index(max(p))]}) + "\n"
            for i, (g, p) in enumerate(zip(gold, probs))))
    (tmp_path / "cwd").mkdir()
    out = run("experiments/committee_dev.py", "--report", "--out", str(tmp_path / "out"), cwd=tmp_path / "cwd")
    assert "seed100 (4 development items, 2 members): chat_qfirst 75.00, plain_qlast 75.00, committee 100.00" in out
    assert "pooled: best member 75.00, committee 100.00" in out


def test_committee_dev_recipe_report_pairs_each_recipe_with_sft(tmp_path):
    seed = tmp_path / "out" / "seed100"
    gold = ["A", "B", "C", "B"]
    answers = {"sft": "ABBB", "committee": "ABCA", "committee_aligned": "ABCB"}
    for name, predicted in answers.items():
        (seed / name / "logs").mkdir(parents=True)
        (seed / name / "logs" / "test_predictions.jsonl").write_text("".join(
            json.dumps({"id": str(i), "gold": g, "prediction": p, "correct": g == p}) + "\n"
            for i, (g, p) in enumerate(zip(gold, predicted))))
    (seed / "recipe_seconds.json").write_text(json.dumps({"sft": 100, "committee": 500, "committee_aligned": 450}))
    (tmp_path / "cwd").mkdir()
    out = run("experiments/committee_dev.py", "--report", "--recipe", "--out", str(tmp_path / "out"),
              cwd=tmp_path / "cwd")
    assert ("seed100: sft 75.00 in 100 s, committee 75.00 in 500 s (5.0x SFT), committee_aligned 100.00 in 450 s "
            "(4.5x SFT)") in out
    assert "pooled over 4 development items: committee - sft +0.00" in out
    assert "pooled over 4 development items: committee_aligned - sft +25.00" in out


def test_committee_backbone_adds_a_member_s_distribution_to_the_round_s_committee(tmp_path):
    seed = tmp_path / "out" / "seed100"
    (seed / "committee_allwords" / "logs").mkdir(parents=True)
    (seed / "gemma_plain_qfirst_words").mkdir()
    gold = ["A", "B", "C", "B"]
    committee = [([0.6, 0.3, 0.1], "AAA"), ([0.1, 0.8, 0.1], "BBB"), ([0.1, 0.1, 0.8], "CCB"), ([0.5, 0.45, 0.05], "ABA")]
    gemma = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.01, 0.98, 0.01]]
    (seed / "committee_allwords" / "logs" / "pseudo_labels_round1.jsonl").write_text("".join(
        json.dumps({"id": str(i), "answer": "ABC"[p.index(max(p))], "probs": p, "view_answers": list(views)}) + "\n"
        for i, (p, views) in enumerate(committee)))
    (seed / "gemma_plain_qfirst_words" / "pool_predictions.jsonl").write_text("".join(
        json.dumps({"id": str(i), "gold": g, "option_probs": p, "prediction": "ABC"[p.index(max(p))]}) + "\n"
        for i, (g, p) in enumerate(zip(gold, gemma))))
    (tmp_path / "cwd").mkdir()
    out = run("experiments/committee_backbone.py", "--seed", "100", "--out", str(tmp_path / "out"),
              cwd=tmp_path / "cwd")
    assert "SmolLM2 member 1: 75.00" in out and "SmolLM2 member 2: 100.00" in out and "committee of 3: 75.00" in out
    assert "Gemma member: 75.00" in out
    assert "committee with the Gemma member at weight 1.0: 100.00" in out
    assert "the Gemma member gets right: 1; the reverse: 1" in out


def test_committee_curve_combines_members_and_pairs_the_distilled_student_with_its_baselines(tmp_path):
    gold = ["A", "B", "C", "B"]
    runs = {"sft": "ABBB", "sft_equal_steps": "ABBA", "distilled": "ABCB", "self_training": "BBBB"}
    members = {"member1": [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.8, 0.1]],
               "member2": [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1]]}
    rows = {name: [{"id": str(i), "gold": g, "prediction": p, "correct": g == p}
                   for i, (g, p) in enumerate(zip(gold, answers))] for name, answers in runs.items()}
    rows.update({name: [{"id": str(i), "gold": g, "option_probs": p, "prediction": "ABC"[p.index(max(p))],
                         "correct": g == "ABC"[p.index(max(p))]} for i, (g, p) in enumerate(zip(gold, probs))]
                 for name, probs in members.items()})
    sys.path.insert(0, str(BENCHMARKS / "experiments"))
    try:
        import committee_curve
    finally:
        sys.path.pop(0)
    for name, predictions in rows.items():
        committee_curve.keep(tmp_path, "fpb_10pct_seed0", name, predictions)
    committee = committee_curve.committee_rows([rows["member1"], rows["member2"]])
    assert [row["prediction"] for row in committee] == ["A", "B", "C", "B"]
    committee_curve.keep(tmp_path, "fpb_10pct_seed0", "committee", committee)
    committee_curve.keep(tmp_path, "fpb_10pct_seed0", "member_best", rows["member1"])
    (tmp_path / "cwd").mkdir()
    out = run("experiments/committee_curve.py", "--report", "--results", str(tmp_path), cwd=tmp_path / "cwd")
    assert "| distilled | 0 | 100.00 |" in out and "| member_best | 0 | 75.00 |" in out
    assert "distilled - sft, paired over 4 test items (seeds 0): +25.00" in out
    assert "committee - member_best, paired over 4 test items (seeds 0): +25.00" in out
    saved = tmp_path / "members"
    (saved / "member2-plain_qlast-seed12-round1-abc").mkdir(parents=True)
    member = {"pattern": {"name": "plain_qlast", "prompt_format": "plain", "question_last": True}, "seed": 12}
    assert committee_curve.member_arguments(member, saved, 2) == [
        "--model.adapter", str(saved / "member2-plain_qlast-seed12-round1-abc"), "--data.prompt_format", "plain",
        "--data.question_last", "true"]
