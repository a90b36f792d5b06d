"""The committee's parts on the tiny model: weighted, softened combining of the views' distributions, and
class-prior alignment of the round's distributions before selection."""

from collections import Counter

import pytest
import torch
from test_semievol import make

from semift_lightning.distributions import align_to_prior, em_prior
from semift_lightning.semievol import CollaborativeVoting, EntropySelection, PriorAlignment, View
from semift_lightning.semievol.combine import mean_vote
from semift_lightning.semievol.records import Vote


def test_prior_alignment_moves_the_mean_to_the_prior_and_keeps_each_row_a_distribution():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.8, 0.1, 0.1]], dtype=torch.float64)
    prior = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)
    aligned = align_to_prior(probs, prior, steps=50)
    assert torch.allclose(aligned.mean(0), prior, atol=1e-3) and torch.allclose(aligned.sum(1), torch.ones(4, dtype=torch.float64))
    assert (aligned.argmax(1) != 0).any()  # the class the rows piled onto gives some of them up
    assert torch.allclose(em_prior(probs, probs.mean(0), steps=1), probs.mean(0))  # a prior the rows already show


def test_the_combined_distribution_takes_view_weights_and_a_temperature():
    votes = [Vote("A", 0.5, [0.8, 0.1, 0.1]), Vote("B", 0.5, [0.2, 0.7, 0.1])]
    even, weighted = mean_vote(votes, log=True), mean_vote(votes, log=True, weights=[0.9, 0.1])
    assert weighted.probs[0] > even.probs[0] and weighted.answer == "A"
    soft = mean_vote(votes, log=True, temperature=2.0)
    assert soft.answer == even.answer and soft.uncertainty > even.uncertainty
    assert mean_vote(votes, log=True, weights=[1.0, 1.0]).probs == pytest.approx(even.probs)


@pytest.mark.parametrize("arguments, message", [
    ({"combine": "mean_log_probs", "self_justification": False, "temperature": 0}, "temperature: must be positive"),
    ({"combine": "mean_log_probs", "self_justification": False, "view_weights": [1.0]},
     r"view_weights: needs one positive weight per view \(2\)"),
    ({"view_weights": [1.0, 2.0]}, "view_weights / temperature: weigh and soften a distribution combiner's mean"),
])
def test_bad_committee_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        CollaborativeVoting(views=[View(), View(adapter="base")], **arguments)
    with pytest.raises(ValueError, match="pool_weight: must be in"):
        PriorAlignment(pool_weight=2)


def test_a_round_with_prior_alignment_trains_on_labels_whose_mix_is_the_labeled_one(tiny_model, fpb_like, tmp_path):
    recipe = [CollaborativeVoting(views=[View(), View(adapter="base")], self_justification=False,
                                  combine="mean_log_probs", temperature=2.0),
              PriorAlignment(pool_weight=0.0, steps=50), EntropySelection(keep_fraction=1.0)]
    module, datamodule, trainer, _ = make(tiny_model, fpb_like, tmp_path, recipe)
    trainer.fit(module, datamodule)
    records = datamodule.store.records
    shares = Counter(datamodule.labeled_answers())
    prior = torch.tensor([shares[letter] + 1.0 for letter in "ABC"])
    prior /= prior.sum()
    assert torch.allclose(torch.tensor([r.probs for r in records], dtype=torch.float64).mean(0), prior.double(),
                          atol=1e-3)
    assert all(r.answer == "ABC"[max(range(3), key=lambda k: r.probs[k])] for r in records)
    metrics = trainer.callback_metrics
    assert abs(float(metrics["semievol/prior_after_A"]) - float(prior[0])) < 1e-3
    assert datamodule.store.stages_done == {"voting": 1, "alignment": 1, "selection": 1}
