"""Every task preset on a few rows in its own column layout: load, prompt, parse, score."""

import json

import pytest

from semift_lightning.data.prompts import PromptBuilder
from semift_lightning.data.readers import to_examples
from semift_lightning.student.loading import ModelSource
from semift_lightning.tasks.registry import PRESETS, get_preset

MC4 = json.dumps(["red", "green", "blue", "black"])
ROWS = {
    "multiple_choice": [{"question": "Sky colour?", "options": MC4, "answer": "C"}],
    "mmlu": [{"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5", "answer_d": "6",
              "correct_answer": "B", "topic": "math"}],
    "mmlu_pro": [{"question_id": 7, "question": "Pick j", "options": json.dumps(list("abcdefghij")), "answer": "J",
                  "category": "other"}],
    "arc": [{"id": "x1", "question": "Sky colour?", "options": MC4, "answer": "blue"}],
    "fpb": [{"question": "Profit rose.", "options": json.dumps(["negative", "neutral", "positive"]), "answer": "C"}],
    "sentiment": [{"question": "Profit rose.", "options": json.dumps(["negative", "neutral", "positive"]),
                   "answer": "positive"}],
    "pubmedqa": [{"question": "Does it work?", "options": json.dumps(["yes", "no", "maybe"]), "answer": "yes"}],
    "yes_no_maybe": [{"question": "Is it?", "options": json.dumps(["yes", "no", "maybe"]), "answer": "maybe"}],
    "usmle": [{"question": "Dose?", "options": json.dumps(["1 mg", "2 mg", "5 mg", "10 mg", "20 mg"]), "answer": "E"}],
    "convfinqa": [{"question": "Growth?", "answer": "12.5%"}],
    "numeric": [{"question": "Revenue?", "answer": "1,200"}],
    "free_text": [{"question": "Capital of France?", "answer": "Paris"}],
}
CORRECT_OUTPUT = {"multiple_choice": ("Answer: C", "C"), "mmlu": ("The answer is (B)", "B"),
                  "mmlu_pro": ("J", "J"), "arc": ("blue", "C"), "fpb": ("**Answer:** C", "C"),
                  "sentiment": ("positive", "C"), "pubmedqa": ("yes", "A"), "yes_no_maybe": ("C", "C"),
                  "usmle": ("Answer: E.", "E"), "convfinqa": ("The answer is 0.125", "0.125"),
                  "numeric": ("1200", "1200"), "free_text": ("Answer: paris", "paris")}


def test_every_preset_has_rows_here():
    assert set(ROWS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_end_to_end(name, tiny_model):
    preset = get_preset(name)
    [example] = to_examples(ROWS[name], preset.task, preset.columns, f"{name}.jsonl")
    tokenizer = ModelSource(tiny_model).load_tokenizer()
    builder = PromptBuilder(tokenizer, preset.task, max_length=256)
    encoded = builder.encode(example, with_target=True)
    assert encoded.target_ids and not encoded.truncated
    assert tokenizer.decode(encoded.target_ids).startswith(preset.task.target_text(example))
    text, parsed = CORRECT_OUTPUT[name]
    assert preset.task.parse(text, example) == parsed
    assert preset.task.is_correct(parsed, example)
    assert not preset.task.is_correct(None, example)
    if preset.task.closed_form:
        wrong = "A" if example.answer != "A" else "B"
        assert not preset.task.is_correct(preset.task.parse(wrong, example), example)
        assert len(builder.option_token_ids) == 10


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="task 'nope' is unknown; known tasks: arc"):
        get_preset("nope")


def test_fixed_options_serve_rows_without_an_options_column():
    preset = get_preset("pubmedqa")
    [example] = to_examples([{"question": "Does it work?", "answer": "no"}], preset.task, preset.columns, "p.csv")
    assert example.options == ("yes", "no", "maybe") and example.answer == "B"


def test_user_content_keeps_semievols_order_unless_the_question_goes_last():
    from dataclasses import replace

    from semift_lightning.tasks.example import Example
    task = get_preset("fpb").task
    example = Example("1", " Profit rose . ", "C", ("negative", "neutral", "positive"))
    options = "Options:\nA. negative\nB. neutral\nC. positive"
    proposed = "Proposed answers (they disagree; pick the correct one):\n- B. neutral\n- C. positive"
    instruction = "Answer with the letter of the sentiment."
    candidates = ["B. neutral", "C. positive"]
    assert task.user_content(example) == f"Profit rose .\n\n{options}\n\n{instruction}"
    assert task.user_content(example, candidates) == f"Profit rose .\n\n{options}\n\n{proposed}\n\n{instruction}"
    last = replace(task, question_last=True)
    assert last.user_content(example) == f"{options}\n\n{instruction}\n\nProfit rose ."
    assert last.user_content(example, candidates) == f"{options}\n\n{instruction}\n\nProfit rose .\n\n{proposed}"
    numeric = get_preset("numeric").task
    assert numeric.user_content(Example("2", "What is 2+2?", "4", None)) == \
        "What is 2+2?\n\nGive the final answer as a number."
