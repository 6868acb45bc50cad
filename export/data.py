"""Data readers and deterministic splits.

- `read_documents`: UTF-8 text files for a language model. A Debian fortune
  file (entries separated by lines holding only `%`) gives one document per
  entry; any other text gives one document per paragraph.
- `read_labelled`: a CSV or TSV file with `label` and `text` columns.
- `split`: a train/validation split fixed by a seed; `lm_corpus` holds out a continuous text's tail.

Every problem with an input file raises `DataError` naming the file; the CLI
turns it into a one-line message and exit code 2.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from service import labelled  # one torch-free reader, shared with `rnnserve eval`


class DataError(Exception):
    """A problem with an input file, worded for the user."""


@dataclass
class Document:
    text: str
    sep: str  # what followed the document in its file, so that joining restores the layout


def read_utf8(path: str | Path) -> str:
    """A UTF-8 text file (BOM and CRLF tolerated) that is not empty (service/labelled.py reads it)."""
    try:
        text = labelled.read_text(path)
    except labelled.LabelledFileError as e:
        raise DataError(str(e)) from None
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text


_FORTUNE_LINE = re.compile(r"^%\s*$", re.M)
FORTUNE_SEP = "%\n"  # what follows a fortune entry when entries are joined again


def is_fortune_text(text: str) -> bool:
    """True when the text is a fortune file: several entries split by lines holding only %."""
    return len(_FORTUNE_LINE.findall(text)) >= 2


def split_fortunes(text: str) -> list[str]:
    entries = (e.strip("\n") for e in _FORTUNE_LINE.split(text))
    return [e + "\n" for e in entries if e.strip()]


def read_documents(paths: list[str | Path], fmt: str = "auto") -> list[Document]:
    """Documents of one or more text files. fmt: auto | fortune | text."""
    if not paths:
        raise DataError("no data file given")
    docs: list[Document] = []
    for path in paths:
        text = read_utf8(path)
        fortune = fmt == "fortune" or (fmt == "auto" and is_fortune_text(text))
        if fortune:
            entries = split_fortunes(text)
            if not entries:
                raise DataError(f"{path}: no fortune entries (entries are separated by lines holding only %)")
            docs += [Document(e, FORTUNE_SEP) for e in entries]
        else:
            paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
            docs += [Document(p.strip("\n") + "\n", "\n") for p in paras]
    return docs


def join_documents(docs: list[Document]) -> str:
    return "".join(d.text + d.sep for d in docs)


def split(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with `seed` and hold out `val_fraction` (at least one item each side)."""
    if len(items) < 2:
        raise DataError("need at least two documents or rows to hold out a validation split")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    val = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


VAL_SPLITS = ("auto", "tail", "shuffle")


def val_split_kind(docs: list[Document], val_split: str = "auto") -> str:
    """`tail` or `shuffle`; `auto` is `shuffle` for fortune entries (separate texts) and `tail` for anything
    else (one continuous text, as published character-level figures are measured)."""
    if val_split not in VAL_SPLITS:
        raise DataError(f"--val-split: {val_split!r} is not one of {', '.join(VAL_SPLITS)}")
    if val_split != "auto":
        return val_split
    return "shuffle" if docs and all(d.sep == FORTUNE_SEP for d in docs) else "tail"


def lm_corpus(docs: list[Document], val_fraction: float, seed: int, val_split: str = "auto") -> tuple[str, str]:
    """Train and validation text for a language model.

    `tail`: the text's contiguous end is held out: the last `val_fraction` of its characters, from the start
    of a line, the convention of published character-level figures (nanoGPT's Shakespeare). Paragraphs held
    out at random share scenes, names and phrases with the training text and can flatter the figure (reported
    for a 1 MB play text: 1.91 bits/char shuffled, 2.14 on its tail; on `make quality`'s Shakespeare file the
    two agree, 1.994 and 1.988 after the same 120 s run).
    `shuffle`: documents held out at random (fortune entries, which are separate texts); a text with very few
    paragraphs is first cut into blocks of lines so that the validation part is spread over the file."""
    if val_split_kind(docs, val_split) == "tail":
        text = join_documents(docs)
        cut = int(len(text) * (1 - val_fraction))
        line = text.find("\n", cut, len(text) - 1)
        cut = line + 1 if line >= 0 else cut
        if cut <= 0 or cut >= len(text):
            raise DataError("the text is too short to hold out a validation split")
        return text[:cut], text[cut:]
    if len(docs) < 20:
        lines = join_documents(docs).splitlines(keepends=True)
        size = max(1, len(lines) // 40)
        docs = [Document("".join(lines[i:i + size]), "") for i in range(0, len(lines), size)]
    if len(docs) < 2:
        raise DataError("the text is too short to hold out a validation split (need at least two lines)")
    train, val = split(docs, val_fraction, seed)
    return join_documents(train), join_documents(val)


def read_labelled(path: str | Path) -> list[tuple[str, str]]:
    """(label, text) rows of a CSV/TSV file with a header naming `label` and `text` (service/labelled.py:
    TSV literally, CSV with standard quoting, every row or an error naming its line)."""
    try:
        rows = labelled.read_labelled(path).rows
    except labelled.LabelledFileError as e:
        raise DataError(str(e)) from None
    for n, (label, t) in enumerate(rows, start=2):
        if not label or not t.strip():
            raise DataError(f"{path}: row {n - 1} (after the header): empty label or text")
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    if len({r[0] for r in rows}) < 2:
        raise DataError(f"{path}: only one class ({rows[0][0]!r}); a classifier needs at least two")
    return rows
