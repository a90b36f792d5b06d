"""The module's shared-prompt-prefix computation and gradient checkpointing against the plain computation."""

from __future__ import annotations

import torch

from semift_lightning import SemiFTDataModule, SemiFTModule
from semift_lightning.data.batch import Collator
from semift_lightning.student.inference import shared_prefix_length


def _loss_and_grads(module: SemiFTModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.requires_grad}


def _module_and_batch(tiny_model, fpb_like, **module_args) -> tuple[SemiFTModule, dict]:
    """A tiny module with non-zero LoRA B weights (seeded) and a left-padded batch of six FPB-like items."""
    module = SemiFTModule(model=tiny_model, **module_args)
    module.configure_model()
    module.log = lambda *args, **kwargs: None  # no trainer here
    torch.manual_seed(0)
    for name, parameter in module.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave every A gradient zero
            parameter.data.normal_(std=0.1)
    datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv")
    datamodule.connect(module.tokenizer)
    items = datamodule.encode("labeled", datamodule.load_split("labeled"), with_target=True)[:6]
    assert len({len(item["input_ids"]) for item in items}) > 1  # left padding is exercised
    return module, Collator(module.tokenizer.pad_token_id)(items)


def test_shared_prompt_prefix_runs_once_per_batch_and_changes_nothing_but_rounding(tiny_model, fpb_like):
    module, batch = _module_and_batch(tiny_model, fpb_like)
    calls = []
    module.decoder.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    assert module.share_prompt_prefix is None  # the default: shared on a CPU
    shared_loss, shared_grads = _loss_and_grads(module, batch)
    width = batch["input_ids"].shape[1]
    assert calls[0][0] == 1 and calls[1] == (6, width - calls[0][1])  # the prefix once, then every item's tail
    assert calls[0][1] >= 3  # at least "<|im_start|>user\n"
    module.share_prompt_prefix = False
    calls.clear()
    plain_loss, plain_grads = _loss_and_grads(module, batch)
    assert calls == [(6, width)]
    plain_last = module.tail_hidden_states(batch["input_ids"], batch["attention_mask"], keep_last=1)[0][:, -1]
    module.share_prompt_prefix = True
    torch.testing.assert_close(shared_loss, plain_loss)
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6)
    shared_last, start = module.tail_hidden_states(batch["input_ids"], batch["attention_mask"], keep_last=1)
    assert start > 0
    torch.testing.assert_close(shared_last[:, -1], plain_last)


def test_shared_prefix_length_leaves_each_item_its_tail_and_needs_left_padding():
    ids = torch.tensor([[0, 5, 6, 7, 8], [5, 6, 7, 9, 9]])
    left = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert shared_prefix_length(ids, left, keep_last=1) == 3
    assert shared_prefix_length(ids, left, keep_last=2) == 2  # the shorter item keeps its last two tokens
    assert shared_prefix_length(ids[:1], left[:1], keep_last=1) == 0  # nothing to share with
    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert shared_prefix_length(torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 9, 9]]), right, keep_last=1) == 0


def test_question_last_makes_a_fixed_option_task_share_its_options_and_instruction(tiny_model, fpb_like):
    module = SemiFTModule(model=tiny_model)
    openings = {}
    for question_last in (False, True):
        datamodule = SemiFTDataModule(task="fpb", root=str(fpb_like), labeled="fpb/labeled.csv",
                                      question_last=question_last)
        datamodule.connect(module.tokenizer)
        examples = datamodule.load_split("labeled")
        items = datamodule.encode("labeled", examples, with_target=True)
        batch = Collator(module.tokenizer.pad_token_id)(items)
        shared = shared_prefix_length(batch["input_ids"], batch["attention_mask"], keep_last=2)
        longest = batch["input_ids"][int(batch["attention_mask"].sum(1).argmax())]
        openings[question_last] = module.tokenizer.decode(longest[:shared])
        prompt = module.tokenizer.decode(items[0]["input_ids"])
        assert (prompt.index(examples[0].question.strip()) > prompt.index(datamodule.task.instruction)) == question_last
    assert "Options:" not in openings[False]
    assert "Options:\nA. negative\nB. neutral\nC. positive\n\nAnswer with the letter of the sentiment." in openings[True]


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_loss_and_gradients(tiny_model, fpb_like):
    plain, batch = _module_and_batch(tiny_model, fpb_like)  # shares the prompt opening (a CPU)
    checkpointed, same_batch = _module_and_batch(tiny_model, fpb_like, gradient_checkpointing=True)
    calls = {"plain": 0, "checkpointed": 0}
    for name, module in (("plain", plain), ("checkpointed", checkpointed)):
        mlp = module.decoder.layers[0].mlp  # counted in forward itself: the recompute runs no module hooks

        def counted(*args, key=name, forward=mlp.forward):
            calls[key] += 1
            return forward(*args)
        mlp.forward = counted
    plain_loss, plain_grads = _loss_and_grads(plain, batch)
    assert calls["plain"] == 2  # the shared opening, then the tails
    checkpointed.zero_grad()
    loss = checkpointed.training_step(same_batch, 0)
    assert calls["checkpointed"] == 1  # every prompt in full
    loss.backward()
    assert calls["checkpointed"] == 2  # and once more in the backward pass
    grads = {name: p.grad for name, p in checkpointed.named_parameters() if p.requires_grad}
    torch.testing.assert_close(loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # inference keeps sharing the opening
        assert checkpointed.tail_hidden_states(batch["input_ids"], batch["attention_mask"], keep_last=1)[1] > 0


def test_free_form_uncertainty_is_the_nll_of_the_answer_span(tiny_model, fpb_like):
    from semift_lightning.student.inference import token_positions
    module, batch = _module_and_batch(tiny_model, fpb_like)
    module.eval()
    texts, whole = module.generate_with_nll(batch, max_new_tokens=6)
    spans = {row: (0, 1) for row, text in enumerate(texts) if text}  # the answer: the first character
    assert spans
    again, first = module.generate_with_nll(batch, max_new_tokens=6, answer_span=lambda text, row: spans.get(row))
    assert again == texts
    with torch.no_grad():
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              position_ids=token_positions(batch["attention_mask"])).logits[:, -1].float()
    greedy_first_token = -logits.log_softmax(-1).max(-1).values  # the NLL of the first generated token
    for row in range(len(texts)):
        expected = greedy_first_token[row].item() if row in spans else whole[row]
        assert abs(first[row] - expected) < 1e-3, (row, texts[row])
    assert any(abs(f - w) > 1e-3 for f, w in zip(first, whole))  # the span, not the whole continuation


def test_generation_runs_in_step_across_ranks_when_the_weights_are_sharded(tiny_model, fpb_like, monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
    module, batch = _module_and_batch(tiny_model, fpb_like)
    seen = []
    generate = module.model.generate
    monkeypatch.setattr(module.model, "generate", lambda **kwargs: seen.append(kwargs["synced_gpus"]) or generate(
        **{**kwargs, "synced_gpus": False}))
    for strategy, world_size in ((FSDPStrategy(), 2), (DDPStrategy(), 2), (FSDPStrategy(), 1)):
        module._trainer = SimpleNamespace(world_size=world_size, strategy=strategy)
        module.generate_with_nll(batch, max_new_tokens=2)
    assert seen == [True, False, False]  # only sharded weights need every rank in every forward pass
