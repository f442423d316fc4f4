"""TARA-Merging (spec section 5): merge coefficients learned from unlabeled inputs; not data-free.

How it works, the options and the deviations from the official code (wooseong97/TARA-Merge): docs/tara.md.
``config`` (options), ``inputs`` (prompts), ``layers`` (the trainable merged layer), ``objective`` (entropy,
aggregation), ``train`` (the trainer), ``run`` (end to end and the written adapter), ``cli`` (`pico tara`).
"""

from .config import INIT_COEFF, LOSSES, POSITIONS, VARIANTS, TaraConfig, TaraError, check_preference
from .inputs import TaskInputs, collate, read_prompts, tokenize_inputs
from .layers import TaraLinear, build_layers
from .objective import aggregate, entropy_sums, mean_entropy
from .run import PLOT_NAME, plot_loss_curve, tara_merge, write_tara
from .train import TaraResult, TaraTrainer, load_base_model, load_tokenizer, prepare, train

__all__ = ["INIT_COEFF", "LOSSES", "POSITIONS", "VARIANTS", "TaraConfig", "TaraError", "check_preference",
           "TaskInputs", "collate", "read_prompts", "tokenize_inputs", "TaraLinear", "build_layers", "aggregate",
           "entropy_sums", "mean_entropy", "PLOT_NAME", "plot_loss_curve", "tara_merge", "write_tara", "TaraResult",
           "TaraTrainer", "load_base_model", "load_tokenizer", "prepare", "train"]
