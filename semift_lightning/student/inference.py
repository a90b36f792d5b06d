"""The student's inference: hidden states (sharing a batch's common prompt prefix), option scores, generation and
prediction records."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from semift_lightning.data.batch import Batch
from semift_lightning.distributions import option_vote
from semift_lightning.tasks.parsing import LETTERS


def token_positions(attention_mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Each token's position among its item's own tokens, counted from ``start``; left padding gets ``start``."""
    return start + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_last: int) -> int:
    """How many leading tokens all items of a left-padded batch share, leaving each item at least ``keep_last``
    tokens; 0 for a single item or a batch that is not left-padded."""
    lengths = attention_mask.sum(1)
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    starts = input_ids.shape[1] - lengths
    width = int(lengths.min()) - keep_last
    if len(input_ids) < 2 or width <= 0 or not torch.equal(attention_mask.bool(), columns >= starts[:, None]):
        return 0
    leading = input_ids.gather(1, starts[:, None] + columns[None, :width])
    return int((leading == leading[:1]).all(0).long().cumprod(0).sum())


class StudentInference:
    """What the student computes without training, as a mixin of ``SemiFTModule``: it needs ``model`` (a peft
    model), ``tokenizer``, ``max_new_tokens``, ``share_prompt_prefix`` and ``gradient_checkpointing``."""

    @property
    def decoder(self) -> nn.Module:
        return self.model.get_base_model().get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_base_model().get_output_embeddings()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states; positions follow the attention mask so left padding is harmless."""
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=token_positions(attention_mask), use_cache=False).last_hidden_state

    def tail_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           keep_last: int) -> tuple[torch.Tensor, int]:
        """Last hidden states of a left-padded batch from some column on, and that column. When sharing (see
        ``share_prompt_prefix``), the leading tokens every item shares (leaving each at least ``keep_last`` tokens)
        run once, as a cache the items continue from, and their count of columns is not returned; in the columns
        that are, those before a shorter item's own tokens mean nothing, like padding."""
        share = self.device.type == "cpu" if self.share_prompt_prefix is None else self.share_prompt_prefix
        share = share and not (self.gradient_checkpointing and self.training and torch.is_grad_enabled())
        shared = shared_prefix_length(input_ids, attention_mask, keep_last) if share else 0
        if shared == 0:
            return self.hidden_states(input_ids, attention_mask), 0
        from transformers import DynamicCache
        cache = DynamicCache(config=self.decoder.config)
        with_cache = {self._cache_argument: cache, "use_cache": True}
        first = input_ids.shape[1] - int(attention_mask[0].sum())
        self.decoder(input_ids=input_ids[:1, first:first + shared], **with_cache)
        cache.batch_repeat_interleave(len(input_ids))
        tail_mask = attention_mask[:, :input_ids.shape[1] - shared]  # left padding: each item's tail ends the row
        hidden = self.decoder(input_ids=input_ids[:, shared:], attention_mask=torch.cat([
            attention_mask.new_ones(len(input_ids), shared), tail_mask], 1),
            position_ids=token_positions(tail_mask, start=shared), **with_cache).last_hidden_state
        return hidden, shared

    @property
    def _cache_argument(self) -> str:
        """The decoder's name for a key/value cache argument (transformers 5.x renamed past_key_values cache)."""
        return "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"

    # ----- inference ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def option_log_probs(self, batch: Batch) -> torch.Tensor:
        """Log-probability of each option letter as the answer's first token, one forward pass; -inf past the
        item's option count. Shape (batch, 10); the batch carries the letters' token ids (``option_token_ids``)."""
        hidden = self.tail_hidden_states(batch["input_ids"], batch["attention_mask"], keep_last=1)[0][:, -1]
        log_probs = self.lm_head(hidden).float().log_softmax(-1)
        scores = log_probs[:, batch["option_token_ids"]]
        counts = torch.tensor([len(example.options) for example in batch["examples"]], device=scores.device)
        return scores.masked_fill(torch.arange(len(LETTERS), device=scores.device)[None] >= counts[:, None], -math.inf)

    @torch.no_grad()
    def generate_with_nll(self, batch: Batch, answer_span: Optional[Callable[[str, int], Optional[tuple[int, int]]]]
                          = None, **kwargs: Any) -> tuple[list[str], list[float]]:
        """Continuations (greedy unless kwargs say otherwise) and the mean negative log-probability of each one's
        tokens up to its end; with ``answer_span(text, row)`` (character offsets of the answer in row ``row``'s
        text, or None), of the tokens that overlap that span instead (all of them where there is none)."""
        sharded = self._trainer is not None and self._trainer.world_size > 1 and \
            isinstance(self._trainer.strategy, FSDPStrategy)  # every rank's forward gathers the shards
        kwargs = {"do_sample": False, "max_new_tokens": self.max_new_tokens, "synced_gpus": sharded, **kwargs}
        if not kwargs["do_sample"]:
            kwargs.pop("temperature", None)
        output = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     pad_token_id=self.tokenizer.pad_token_id, output_scores=True,
                                     return_dict_in_generate=True, **kwargs)
        new_tokens = output.sequences[:, batch["input_ids"].shape[1]:]
        log_probs = torch.stack(output.scores, 1).float().log_softmax(-1)
        token_log_probs = log_probs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        ended = (new_tokens == self.tokenizer.pad_token_id) | (new_tokens == self.tokenizer.eos_token_id)
        keep = (ended.long().cumsum(1) - ended.long()) == 0  # tokens up to and including the first end token
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        if answer_span is not None:
            for row, text in enumerate(texts):
                span = answer_span(text, row)
                if span is not None:
                    in_span = self._tokens_in_span(new_tokens[row], span)
                    if in_span.any():
                        keep[row] = in_span
        nll = (-(token_log_probs * keep).sum(1) / keep.sum(1).clamp_min(1)).tolist()
        return texts, nll

    def _tokens_in_span(self, tokens: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        """Which of the generated ``tokens`` overlap characters ``span`` of their decoded text."""
        ends = [len(self.tokenizer.decode(tokens[:i + 1], skip_special_tokens=True)) for i in range(len(tokens))]
        starts = [0, *ends[:-1]]
        return torch.tensor([end > span[0] and start < span[1] and end > start for start, end in zip(starts, ends)],
                            device=tokens.device)

    def predict_batch(self, batch: Batch) -> list[dict]:
        """One record per item: prediction, correctness when the gold answer is known, option probabilities."""
        task = self.task
        records = []
        if task.closed_form:
            scores = self.option_log_probs(batch)
            for example, row in zip(batch["examples"], scores):
                prediction, probs = option_vote(row, len(example.options))
                records.append({"id": example.id, "prediction": prediction, "option_probs": probs.tolist()})
                if example.answer and example.answer in LETTERS[:len(example.options)]:  # the answer's first-token loss
                    records[-1]["gold_nll"] = -float(row[LETTERS.index(example.answer)])
        else:
            for example, text in zip(batch["examples"], self.generate_with_nll(batch)[0]):
                records.append({"id": example.id, "prediction": task.parse(text, example), "output": text})
        for record, example, truncated in zip(records, batch["examples"], batch["truncated"]):
            record["truncated"] = bool(truncated)
            record["gold"] = example.answer
            record["correct"] = None if example.answer is None else task.is_correct(record["prediction"], example)
            record["category"] = example.category
        return records

