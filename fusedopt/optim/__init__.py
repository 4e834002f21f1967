from .adafactor import Adafactor
from .adam import Adam, AdamW
from .lamb import LAMB
from .lion import Lion
from .sgd import SGD
from .sophia import Sophia

__all__ = ["LAMB", "Adafactor", "SGD", "Adam", "AdamW", "Lion", "Sophia"]
