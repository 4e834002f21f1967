from ._q8 import dequantize_state_dict, state_bytes
from .adafactor import Adafactor
from .adam import Adam, AdamW
from .lamb import LAMB
from .lion import Lion
from .muon import Muon, MuonWithAuxAdam, muon_param_groups
from .schedule_free import ScheduleFreeAdamW
from .sgd import SGD
from .sophia import Sophia

__all__ = [
    "LAMB",
    "SGD",
    "Adafactor",
    "Adam",
    "AdamW",
    "Lion",
    "Muon",
    "MuonWithAuxAdam",
    "ScheduleFreeAdamW",
    "Sophia",
    "dequantize_state_dict",
    "muon_param_groups",
    "state_bytes",
]
