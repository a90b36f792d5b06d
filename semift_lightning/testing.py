"""Tiny stand-ins for tests, scripts and notebooks: a random-init Llama with a real (tiny) byte-level BPE tokenizer
and ChatML template, and sentiment rows laid out like the SemiEvol FPB files. Not for real training."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SENTIMENT = ["negative", "neutral", "positive"]
WORDS = {"negative": ["fell", "loss", "down", "weak"], "neutral": ["held", "said", "meeting", "office"],
         "positive": ["rose", "profit", "up", "strong"]}


def make_tiny_model(folder: Path, hidden_size: int = 32) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(words) + " Options Answer with the letter of the sentiment sentence company"
              for words in WORDS.values()] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<|endoftext|>",
                                        bos_token="<|im_start|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=True, initializer_range=0.3)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentiment_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = SENTIMENT[i % 3]
        words = rng.sample(WORDS[label], 3)
        rows.append({"question": f"Sentence {seed}.{i}: the company {' '.join(words)}.", "gt": label,
                     "options": json.dumps(SENTIMENT), "answer": "ABC"[SENTIMENT.index(label)]})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_fpb_like(root: Path, labeled: int = 24, unlabeled: int = 30, test: int = 12) -> Path:
    """A folder laid out like the SemiEvol fpb split: fpb/labeled.csv, unlabeled.csv and test.csv."""
    (root / "fpb").mkdir(parents=True, exist_ok=True)
    for seed, (split, count) in enumerate([("labeled", labeled), ("unlabeled", unlabeled), ("test", test)], start=1):
        write_csv(root / "fpb" / f"{split}.csv", sentiment_rows(count, seed=seed))
    return root
