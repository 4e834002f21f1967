from .adam import Adam, AdamW
from .lamb import LAMB
from .lion import Lion
from .muon import Muon, MuonWithAuxAdam, muon_param_groups
from .sgd import SGD
from .sophia import Sophia

__all__ = [
    "LAMB",
    "SGD",
    "Adam",
    "AdamW",
    "Lion",
    "Muon",
    "MuonWithAuxAdam",
    "Sophia",
    "muon_param_groups",
]
