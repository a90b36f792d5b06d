"""A 4-bit (QLoRA) or 8-bit base through bitsandbytes, on the CPU, with a tiny model wide enough for its blocks."""

import lightning as L
import pytest
import torch

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.errors import ArgumentError, ModelError
from semift_lightning.testing import make_tiny_model

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def wide_tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("wide_tiny_llama"), hidden_size=64))  # bnb blocks of 64


@pytest.mark.parametrize("quantization, layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_a_quantized_base_trains_its_adapter_and_checkpoints_only_that(wide_tiny_model, fpb_like, tmp_path,
                                                                       quantization, layer):
    L.seed_everything(0)
    module = SemiFTModule(model=wide_tiny_model, lora={"r": 4}, optimizer={"lr": 0.01}, quantization=quantization)
    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv", test="fpb/test.csv",
                                  batch_size=4)
    trainer = L.Trainer(max_epochs=1, precision="32-true", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    datamodule.connect(module.tokenizer, module.max_context_length)
    trainer.fit(module, datamodule)
    base = module.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(base).__name__ == layer
    checkpoint = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=True)
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for k, v in checkpoint["state_dict"].items()
               if "lora_B" in k)  # B starts at zero: the adapter trained
    assert trainer.test(module, datamodule, verbose=False)[0]["test/fpb/acc"] >= 0
    with pytest.raises(ModelError, match=r"merge=True\): the base is quantized \(" + quantization):
        module.export_adapter(tmp_path / "merged", merge=True)
    module.export_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_an_unknown_quantization_is_refused_before_loading(wide_tiny_model):
    with pytest.raises(ArgumentError, match=r"model.quantization: must be one of none, nf4, int8, got 'fp4'"):
        SemiFTModule(model=wide_tiny_model, quantization="fp4")
