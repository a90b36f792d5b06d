"""The SemiEvol round as Lightning callbacks, one stage a file: in-context propagation, collaborative voting or a
committee of fine-tuned members, prior alignment, entropy selection and restarting the student, talking only through
the pseudo-label store."""

from semift_lightning.semievol.alignment import PriorAlignment
from semift_lightning.semievol.committee import CommitteeVoting
from semift_lightning.semievol.context import RoundContext
from semift_lightning.semievol.members import Member
from semift_lightning.semievol.propagation import InContextPropagation
from semift_lightning.semievol.records import PseudoLabel, Vote
from semift_lightning.semievol.restart import RestartStudent
from semift_lightning.semievol.schedule import Schedule
from semift_lightning.semievol.selection import EntropySelection
from semift_lightning.semievol.stage import SemiEvolStage, run_round
from semift_lightning.semievol.store import PseudoLabelStore
from semift_lightning.semievol.views import View
from semift_lightning.semievol.voting import CollaborativeVoting

__all__ = ["CollaborativeVoting", "CommitteeVoting", "EntropySelection", "InContextPropagation", "Member",
           "PriorAlignment", "PseudoLabel",
           "PseudoLabelStore", "RestartStudent", "RoundContext", "Schedule", "SemiEvolStage", "View", "Vote",
           "run_round"]
