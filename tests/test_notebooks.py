"""The notebooks run top to bottom (code cells in order, one namespace) on a tiny model, so they cannot rot."""

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, monkeypatch, **env: str) -> dict:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cells = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))["cells"]
    namespace = {"__name__": "__main__"}
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{name}[cell {index}]", "exec"), namespace)
    return namespace


def test_plug_in_notebook_runs_the_callbacks_in_a_foreign_module(tiny_model, fpb_like, tmp_path, monkeypatch):
    data = {"task": "fpb", "root": str(fpb_like), "labeled": "fpb/labeled.csv", "unlabeled": "fpb/unlabeled.csv",
            "max_length": 256}
    out = run_notebook("plug_in_callbacks.ipynb", monkeypatch, SEMIFT_NB_MODEL=tiny_model,
                       SEMIFT_NB_DATA=json.dumps(data), SEMIFT_NB_OUT=str(tmp_path))
    records, trainer = out["datamodule"].store.records, out["trainer"]
    selected = [r for r in records if r.selected]
    assert len(records) == 30 and 0 < len(selected) <= 12
    assert len(trainer.train_dataloader.dataset) == 24 + len(selected)
    assert type(out["module"]).__module__ == "__main__"  # the notebook's own module, not ours
    assert (tmp_path / "logs" / "pseudo_labels_round1.jsonl").exists()


def test_quickstart_notebook_runs_vanilla_sft_and_semievol_and_draws(tiny_model, fpb_like, tmp_path, monkeypatch):
    data = {"task": "fpb", "root": str(fpb_like), "labeled": "fpb/labeled.csv", "unlabeled": "fpb/unlabeled.csv",
            "test": "fpb/test.csv", "max_length": 256}
    out = run_notebook("quickstart.ipynb", monkeypatch, MPLBACKEND="Agg", SEMIFT_NB_MODEL=tiny_model,
                       SEMIFT_NB_DATA=json.dumps(data), SEMIFT_NB_OUT=str(tmp_path), SEMIFT_NB_SFT_EPOCHS="2")
    assert list(out["accuracy"]) == ["vanilla", "SFT", "SemiEvol"]
    assert all(0 <= low <= mean <= high <= 1 for mean, low, high in out["accuracy"].values())
    assert len(out["records"]) == 30 and 0 < sum(r.selected for r in out["records"]) < 30
    assert len(out["right"]) + len(out["wrong"]) == 30  # the pool's gold is known in the test data
    assert (tmp_path / "sft_adapter" / "adapter_config.json").exists()
    assert (tmp_path / "semievol" / "logs" / "pseudo_labels_round1.jsonl").exists()
    assert (tmp_path / "quickstart.png").stat().st_size > 10_000
