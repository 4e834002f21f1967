"""Plain-PyTorch definitions of every fusedopt update: the specification.

Each function has the same signature as the op ``torch.ops.fusedopt.<name>`` it specifies, updates
its arguments in place, and is written to be read: one parameter at a time, math in ``opmath``
(fp32 for fp16/bf16 storage, the storage dtype otherwise), stored back in the storage dtype.
The tests run these in fp64 as the ground truth, and ``backend="reference"`` runs them for real.
"""

from ._common import opmath_dtype, sum_sq
from .adafactor import adafactor_
from .adam import adam8bit_, adam_
from .lamb import lamb_
from .lion import lion8bit_, lion_
from .muon import muon_, muon_momentum_
from .schedule_free import schedule_free_adamw_, schedule_free_swap_
from .sgd import sgd8bit_, sgd_
from .sophia import sophia_, sophia_update_hessian_

__all__ = [
    "adafactor_",
    "adam8bit_",
    "adam_",
    "lamb_",
    "lion8bit_",
    "lion_",
    "muon_",
    "muon_momentum_",
    "schedule_free_adamw_",
    "schedule_free_swap_",
    "sgd8bit_",
    "sgd_",
    "sophia_",
    "sophia_update_hessian_",
    "opmath_dtype",
    "sum_sq",
]
