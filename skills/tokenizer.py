"""Character-level tokenizer for the skills suite.

Built with `tokenizers` (WordLevel model + an empty-pattern Split pre-tokenizer + Fuse decoder) and wrapped in a
`PreTrainedTokenizerFast`, so it saves with `save_pretrained` and loads with `AutoTokenizer.from_pretrained` like any
hub tokenizer.  The vocabulary size equals the model's `vocab_size` (see `VOCAB`), so every id decodes.

No post-processor: encoding adds no BOS/EOS, which is what lm-eval's HF model class does by default for causal
models (`add_bos_token=None`), so training and evaluation see the same ids.
"""
from __future__ import annotations

import string

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(string.ascii_lowercase) + list(string.digits) + list(" \n=+-*/%;:,.()[]<>?!_")
VOCAB: list[str] = SPECIAL + CHARS
VOCAB_SIZE = len(VOCAB)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def build_tokenizer():
    """Return a fresh `PreTrainedTokenizerFast` over `VOCAB` (one token per character)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # isolate every character (including spaces and newlines) as its own pre-token
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(""), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )
    tok.padding_side = "right"
    return tok


def encode(text: str) -> list[int]:
    """Fast pure-Python encoding used by the training loops (identical ids to the HF tokenizer)."""
    table = _TABLE
    return [table.get(c, UNK_ID) for c in text]


def decode(ids) -> str:
    out = []
    for i in ids:
        i = int(i)
        if i < len(SPECIAL):
            continue
        out.append(VOCAB[i])
    return "".join(out)


_TABLE = {tok: i for i, tok in enumerate(VOCAB) if len(tok) == 1}
