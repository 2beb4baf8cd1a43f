"""mnist_addition: an MNIST digit and a number 0-9 in; the digit and their sum out.

The core (config, data, model, metrics, evaluate, runs) needs only torch; ``train`` adds Accelerate.
"""

from .config import ConfigError, TrainConfig
from .model import build_model, count_parameters

__all__ = ["ConfigError", "TrainConfig", "build_model", "count_parameters"]
__version__ = "0.1.0"
