"""The two models: a language model and a sequence classifier.

Both are batch-first and use PyTorch's fused nn.LSTM / nn.GRU (see cells.py for
the same equations written out). State is `(h, c)` for an LSTM and `h` for a GRU,
each of shape (layers * directions, batch, hidden).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


def init_rnn_(rnn: nn.LSTM | nn.GRU) -> None:
    """Initialisation a careful practitioner uses for recurrent layers."""
    for name, p in rnn.named_parameters():
        if name.startswith("weight_hh"):
            # Orthogonal recurrent weights keep the signal's norm through many steps.
            for w in p.data.chunk(4 if isinstance(rnn, nn.LSTM) else 3, dim=0):
                nn.init.orthogonal_(w)
        elif name.startswith("weight_ih"):
            nn.init.xavier_uniform_(p.data)
        elif name.startswith("bias"):
            nn.init.zeros_(p.data)
            if isinstance(rnn, nn.LSTM) and name.startswith("bias_ih"):
                # Forget-gate bias 1: the cell starts out remembering, so gradients
                # flow through time from the first updates (Jozefowicz et al., 2015).
                h = rnn.hidden_size
                p.data[h:2 * h] = 1.0


class LanguageModel(nn.Module):
    """Embedding -> LSTM|GRU -> Linear over the vocabulary."""

    def __init__(self, vocab_size: int, cell: str = "lstm", num_layers: int = 1,
                 hidden_size: int = 512, embed_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        if cell not in RNNS:
            raise ValueError(f"cell must be one of {sorted(RNNS)}, not {cell!r}")
        self.config = dict(kind="lm", vocab_size=vocab_size, cell=cell, num_layers=num_layers,
                           hidden_size=hidden_size, embed_dim=embed_dim, dropout=dropout)
        self.cell, self.num_layers, self.hidden_size = cell, num_layers, hidden_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = RNNS[cell](embed_dim, hidden_size, num_layers, batch_first=True,
                              dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)
        # Embeddings stay N(0, 1) (PyTorch's default): with Xavier input weights a unit-scale
        # input moves the gates from the first step; a small embedding scale slows learning a lot.
        init_rnn_(self.rnn)

    def init_state(self, batch_size: int, device=None):
        h = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def set_dropout(self, p: float) -> None:
        """Change the dropout rate (training decides it once it knows how long the run will be)."""
        self.drop.p = p
        self.rnn.dropout = p if self.num_layers > 1 else 0.0
        self.config["dropout"] = p

    def forward(self, tokens: Tensor, state=None):
        """tokens (batch, time) -> logits (batch, time, vocab), new state."""
        if state is None:
            state = self.init_state(tokens.shape[0], tokens.device)
        y, state = self.rnn(self.embed(tokens), state)
        return self.out(self.drop(y)), state

    @torch.no_grad()
    def generate(self, prompt: list[int], max_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, state=None,
                 return_state: bool = False, guard=None, pad_id: int | None = None):
        """Sample `max_tokens` ids after `prompt`, carrying the state step by step.

        The prompt is run through once; each new token is then fed alone with the
        carried state, so the prefix is never recomputed. The returned state has
        consumed everything but the last generated token: `generate([last], ...,
        state=state)` continues the text exactly. `pad_id` is never sampled; with `guard` (a byte-level
        vocabulary's service.utf8.Utf8Guard) only tokens that keep the bytes valid UTF-8 are, as the
        server samples."""
        if not prompt:
            raise ValueError("generate needs at least one prompt token to condition on")
        was_training = self.training
        self.eval()
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        logits, state = self(torch.tensor([prompt]), state)
        last = logits[0, -1]
        out: list[int] = []
        pending = guard.pending_of(prompt) if guard is not None else b""
        for k in range(max_tokens):
            if pad_id is not None:
                last = last.clone()
                last[pad_id] = float("-inf")
            if guard is not None:
                last = last.masked_fill(~torch.from_numpy(guard.allowed(pending)), float("-inf"))
            tok = sample_next(last, temperature, top_k, top_p, gen)
            if guard is not None:
                pending = guard.after(pending, tok)
            out.append(tok)
            if k + 1 < max_tokens:  # the last token is left unfed: the caller feeds it to continue
                logits, state = self(torch.tensor([[tok]]), state)
                last = logits[0, -1]
        self.train(was_training)
        return (out, state) if return_state else out


def sample_next(logits: Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator) -> int:
    """One token from a logit vector: greedy at temperature 0, else top-k / nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # smallest set whose mass reaches top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[idx[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


class Classifier(nn.Module):
    """Embedding -> 2-layer bidirectional LSTM|GRU -> [last forward h; last backward h]
    -> dropout -> Linear over the classes.

    Variable-length batches are packed with their lengths, so padding never reaches
    the recurrent layers: a padded row gives the logits of the same text alone."""

    def __init__(self, vocab_size: int, num_classes: int, cell: str = "lstm", hidden_size: int = 128,
                 embed_dim: int = 64, dropout: float = 0.3, num_layers: int = 2, pad_id: int = 0):
        super().__init__()
        if cell not in RNNS:
            raise ValueError(f"cell must be one of {sorted(RNNS)}, not {cell!r}")
        self.config = dict(kind="classifier", vocab_size=vocab_size, num_classes=num_classes, cell=cell,
                           hidden_size=hidden_size, embed_dim=embed_dim, dropout=dropout,
                           num_layers=num_layers, pad_id=pad_id)
        self.cell, self.num_layers, self.hidden_size = cell, num_layers, hidden_size
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = RNNS[cell](embed_dim, hidden_size, num_layers, batch_first=True, bidirectional=True,
                              dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden_size, num_classes)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        init_rnn_(self.rnn)

    def init_state(self, batch_size: int, device=None):
        h = torch.zeros(self.num_layers * 2, batch_size, self.hidden_size, device=device)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (batch, time) padded, lengths (batch,) >= 1 -> logits (batch, classes).

        A batch whose texts all fill the time axis skips packing: the same arithmetic, and PyTorch's packed
        CPU path is about four times slower (training groups texts of equal length for this, see
        export/train.py `length_batches`). Export traces the packed path, whatever the example."""
        x = self.embed(tokens)
        if torch.jit.is_tracing() or not bool((lengths == tokens.shape[1]).all()):
            x = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(x, self.init_state(tokens.shape[0], tokens.device))
        h = state[0] if self.cell == "lstm" else state
        # h: (layers * 2, batch, hidden); the last layer's forward and backward are the last two rows.
        return self.out(self.drop(torch.cat([h[-2], h[-1]], dim=1)))


def build(config: dict) -> nn.Module:
    """A model from the JSON config saved in its checkpoint."""
    cfg = {k: v for k, v in config.items() if k != "kind"}
    return LanguageModel(**cfg) if config["kind"] == "lm" else Classifier(**cfg)
