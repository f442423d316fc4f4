"""TARA-Merging (spec section 5): merge coefficients learned from unlabeled inputs; not data-free.

How it works, the options and the deviations from the official code (wooseong97/TARA-Merge): docs/tara.md.
``config`` (options), ``inputs`` (prompts), ``layers`` (the trainable merged layer), ``objective`` (entropy,
aggregation), ``teacher`` (the teacher objective: replies, their cache, the token losses), ``train`` (the trainer),
``run`` (end to end and the written adapter), ``cli`` (`pico tara`).
"""

from .config import (
    INIT_COEFF,
    LOSSES,
    OBJECTIVES,
    POSITIONS,
    TEACHER_LOSSES,
    VARIANTS,
    TaraConfig,
    TaraError,
    check_preference,
)
from .inputs import TaskInputs, collate, read_prompt_rows, read_prompts, tokenize_inputs
from .layers import LearnedLinear, TaraLinear, build_layers
from .objective import aggregate, entropy_sums, mean_entropy
from .run import PLOT_NAME, plot_loss_curve, tara_key, tara_merge, write_tara
from .teacher import TeacherTask, default_cache_dir, token_losses
from .train import TaraResult, TaraTrainer, load_base_model, load_tokenizer, prepare, train

__all__ = ["INIT_COEFF", "LOSSES", "OBJECTIVES", "POSITIONS", "TEACHER_LOSSES", "VARIANTS", "TaraConfig", "TaraError",
           "check_preference", "TaskInputs", "collate", "read_prompt_rows", "read_prompts",
           "tokenize_inputs", "LearnedLinear", "TaraLinear", "build_layers", "aggregate", "tara_key", "TeacherTask",
           "default_cache_dir", "token_losses",
           "entropy_sums", "mean_entropy", "PLOT_NAME", "plot_loss_curve", "tara_merge", "write_tara", "TaraResult",
           "TaraTrainer", "load_base_model", "load_tokenizer", "prepare", "train"]
