"""Pure maths of combining votes: grouping answers, mean distributions, label propagation, candidates."""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch

from semift_lightning.distributions import normalized_entropy
from semift_lightning.semievol.records import PseudoLabel, Vote
from semift_lightning.tasks.example import Example
from semift_lightning.tasks.parsing import LETTERS


class Combiner:
    """How the views' votes on one item make its pseudo-label. A new way is a subclass with its own ``name``,
    listed in ``COMBINERS`` (``CollaborativeVoting(combine=NAME)``)."""

    name: ClassVar[str] = ""
    settles_disputes: ClassVar[bool] = True  # its answer stands; False: a dispute goes to self-justification
    closed_form_only: ClassVar[bool] = True  # it needs option distributions

    def __call__(self, votes: Sequence[Vote], weights: Optional[Sequence[float]] = None,
                 temperature: float = 1.0) -> Vote:
        """One vote from the views' ``votes``, weighted by ``weights`` and softened by ``temperature``."""
        raise NotImplementedError


class MajorityVote(Combiner):
    """An answer every answering view agrees on; otherwise self-justification, or the majority (ties: the least
    uncertain group), decides (``combine_votes``)."""

    name = "vote"
    settles_disputes = False
    closed_form_only = False


class MeanProbs(Combiner):
    """The most likely option of the views' mean option distribution; its normalised entropy is the
    uncertainty."""

    name = "mean_probs"

    def __call__(self, votes, weights=None, temperature=1.0) -> Vote:
        return mean_vote(votes, False, weights, temperature)


class MeanLogProbs(Combiner):
    """The same for the normalised mean of the views' log-probabilities (a product of experts: an option any view
    rules out loses)."""

    name = "mean_log_probs"

    def __call__(self, votes, weights=None, temperature=1.0) -> Vote:
        return mean_vote(votes, True, weights, temperature)


COMBINERS: dict[str, type[Combiner]] = {kind.name: kind for kind in (MajorityVote, MeanProbs, MeanLogProbs)}


def same_answer(task, a: Optional[str], b: Optional[str], example: Example) -> bool:
    if a is None or b is None:
        return False
    return a == b or task.is_correct(a, Example(example.id, example.question, b, example.options))


def group_votes(task, example: Example, votes: Sequence[Vote]) -> list[list[Vote]]:
    """The answered votes grouped by the answer they give, groups in order of first appearance."""
    groups: list[list[Vote]] = []
    for vote in votes:
        if vote.answer is None:
            continue
        group = next((g for g in groups if same_answer(task, g[0].answer, vote.answer, example)), None)
        group.append(vote) if group else groups.append([vote])
    return groups


def combine_votes(task, example: Example, votes: Sequence[Vote]) -> PseudoLabel:
    """One record from the views' votes: agreed answer with mean uncertainty, or a dispute."""
    answered = [v for v in votes if v.answer is not None]
    groups = group_votes(task, example, votes)
    record = PseudoLabel(example.id, view_answers=[v.answer for v in votes], disputed=len(groups) > 1,
                         unanimous=len(groups) == 1 and len(answered) == len(votes))
    if not groups:
        return record
    best = max(groups, key=lambda g: (len(g), -sum(v.uncertainty for v in g) / len(g)))
    record.answer = best[0].answer
    if task.closed_form:  # the views' mean option distribution, which soft pseudo-label targets train on
        mean = mean_vote(answered)
        record.uncertainty, record.probs = mean.uncertainty, mean.probs
    else:
        record.uncertainty = sum(v.uncertainty for v in best) / len(best)
    return record


def distribution_record(task, example: Example, votes: Sequence[Vote], combiner: Combiner,
                        weights: Optional[Sequence[float]] = None, temperature: float = 1.0) -> PseudoLabel:
    """One item's record whose answer, uncertainty and distribution are the distribution ``combiner``'s."""
    record = combine_votes(task, example, votes)
    combined = combiner(votes, weights, temperature)
    record.answer, record.uncertainty, record.probs = combined.answer, combined.uncertainty, combined.probs
    return record


def mean_vote(votes: Sequence[Vote], log: bool = False, weights: Optional[Sequence[float]] = None,
              temperature: float = 1.0) -> Vote:
    """One closed-form vote from several: the mean option distribution of those that answered (``log``: the
    normalised mean of their log-probabilities), its most likely option and normalised entropy. ``weights``: each
    vote's weight (default: equal); ``temperature`` above 1 softens the result (with ``log``, the mean
    log-probabilities are divided by it before the softmax: PET's soft targets; otherwise the mean distribution is
    raised to 1/temperature)."""
    pairs = [(vote.probs, weight) for vote, weight in zip(votes, weights or [1.0] * len(votes))
             if vote.answer is not None]
    if not pairs:
        return Vote(None)
    probs = torch.tensor([p for p, _ in pairs])
    if weights is None:
        probs = (probs.clamp_min(1e-12).log().mean(0) / temperature).softmax(0) if log else probs.mean(0)
    else:
        shares = torch.tensor([w for _, w in pairs], dtype=probs.dtype)[:, None]
        shares = shares / shares.sum()
        probs = ((probs.clamp_min(1e-12).log() * shares).sum(0) / temperature).softmax(0) if log \
            else (probs * shares).sum(0)
    if not log and temperature != 1.0:
        probs = probs ** (1 / temperature)
        probs = probs / probs.sum()
    return Vote(LETTERS[int(probs.argmax())], normalized_entropy(probs), probs.tolist())


def label_propagation_vote(neighbours: Sequence[tuple[Example, float]], option_count: int) -> Vote:
    """The neighbours' gold answers as one closed-form vote: the histogram over options weighted by (non-negative)
    cosine similarity; a neighbour whose answer is not among the item's options does not vote."""
    probs = torch.zeros(option_count, dtype=torch.float64)
    for example, similarity in neighbours:
        if example.answer in LETTERS[:option_count]:
            probs[LETTERS.index(example.answer)] += max(similarity, 0.0)
    if not probs.sum() > 0:
        return Vote(None)
    probs /= probs.sum()
    return Vote(LETTERS[int(probs.argmax())], normalized_entropy(probs), probs.tolist())


def candidates_shown(task, example: Example, votes: Sequence[Vote]) -> list[str]:
    """The distinct answers of a dispute as self-justification shows them; closed-form ones in option order (the
    order ``CollaborativeVoting.justify`` rotates), so that no view is favoured by being listed first."""
    distinct = [group[0] for group in group_votes(task, example, votes)]
    if task.closed_form:
        distinct.sort(key=lambda vote: LETTERS.index(vote.answer))
    return [task.proposed_answer(example, vote.answer, vote.text) for vote in distinct]
