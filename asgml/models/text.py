"""Text encoders over token ids ``(B, L)`` int64 (0 = padding) with ``lengths`` ``(B,)``.

* `BagOfWordsEncoder` -- needs no download: a mean of learned word embeddings over
  the valid tokens (``nn.EmbeddingBag``), then ``Linear - ReLU``. Pairs with the hashed
  word tokenizer of `asgml.data.food101` (``tokenizer: hash``).
* `BertTextEncoder` -- a BERT loaded from a local directory with ``transformers``
  (``pip install -e .[text]``; nothing is downloaded). As BalanceBenchmark's text encoder
  (https://github.com/GeWu-Lab/BalanceBenchmark @ 4c1482f
  ``balancemm/encoders/pretrained_encoder.py:14-26``): the pooled output (``[CLS]`` through
  BERT's pooler) -> ``Linear(hidden, feature_dim)`` -> dropout. Two switches reproduce what
  that code executes: ``attention_mask: false`` (it passes the ids alone, so padding is
  attended to) and ``dropout_at_eval: true`` (it calls ``F.dropout`` without
  ``training=self.training``, so the dropout also acts at evaluation).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _check_ids(name: str, x: Tensor) -> None:
    if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} expects (B, L) integer token ids, got {x.dtype} {tuple(x.shape)}")


def valid_mask(x: Tensor, lengths: Tensor | None) -> Tensor:
    """``(B, L)`` 1 for the first ``lengths[b]`` tokens (all non-zero ids if None)."""
    if lengths is None:
        return (x != 0).long()
    steps = torch.arange(x.shape[1], device=x.device)
    return (steps[None, :] < lengths.to(x.device)[:, None]).long()


class BagOfWordsEncoder(nn.Module):
    """Mean word embedding of the valid tokens -> ``Linear(embed_dim, feature_dim)`` -> ReLU.

    Args:
        vocab_size: number of token ids (id 0 is padding and never counted).
        embed_dim: embedding width.
        feature_dim: output width.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 256, feature_dim: int = 512) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"BagOfWordsEncoder.vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="sum", padding_idx=0)
        self.proj = nn.Linear(embed_dim, feature_dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        _check_ids("BagOfWordsEncoder", x)
        if int(x.max()) >= self.vocab_size or int(x.min()) < 0:
            raise ValueError(
                f"BagOfWordsEncoder built for vocab_size={self.vocab_size} got token ids in "
                f"[{int(x.min())}, {int(x.max())}]"
            )
        mask = valid_mask(x, lengths)
        ids = x.long() * mask  # tokens past the length become padding
        summed = self.embed(ids)
        count = (ids != 0).sum(dim=1, keepdim=True).clamp_min(1).to(summed.dtype)
        return F.relu(self.proj(summed / count))


class BertTextEncoder(nn.Module):
    """A local BERT (``transformers``), its pooled output -> Linear -> dropout.

    Args:
        model_dir: a directory written by ``save_pretrained`` (``config.json`` + weights),
            e.g. a copy of ``bert-base-uncased``; a missing directory is an error naming it.
        feature_dim: output width (1024 in BalanceBenchmark).
        dropout: dropout probability after the projection (0.5, ``F.dropout``'s default).
        attention_mask: mask padding (``lengths``); false as BalanceBenchmark executes.
        dropout_at_eval: keep the dropout at evaluation, as BalanceBenchmark executes.
        freeze: keep BERT's weights fixed (only the projection trains).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        feature_dim: int = 1024,
        dropout: float = 0.5,
        attention_mask: bool = True,
        dropout_at_eval: bool = False,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        try:
            from transformers import BertModel
        except ImportError as e:
            raise ImportError(
                "BertTextEncoder needs transformers: pip install -e .[text] "
                "(or use the BagOfWordsEncoder, which needs no extra)"
            ) from e
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"BertTextEncoder: no BERT model at {path.resolve()} (expected config.json and "
                "the weights written by save_pretrained). Nothing is downloaded: on a machine "
                'with internet run `python -c "from transformers import BertModel, '
                "BertTokenizer; [c.from_pretrained('bert-base-uncased').save_pretrained('DIR') "
                'for c in (BertModel, BertTokenizer)]"` and copy DIR there'
            )
        self.bert = BertModel.from_pretrained(str(path), local_files_only=True)
        self.bert.train()  # from_pretrained returns it in eval mode; follow the module's mode
        if freeze:
            self.bert.requires_grad_(False)
        hidden = self.bert.config.hidden_size
        self.proj = nn.Linear(hidden, feature_dim)
        self.feature_dim = feature_dim
        self.p = float(dropout)
        self.attention_mask = attention_mask
        self.dropout_at_eval = dropout_at_eval

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        _check_ids("BertTextEncoder", x)
        mask = valid_mask(x, lengths) if self.attention_mask else None
        pooled = self.bert(input_ids=x.long(), attention_mask=mask).pooler_output
        return F.dropout(self.proj(pooled), self.p, training=self.training or self.dropout_at_eval)
