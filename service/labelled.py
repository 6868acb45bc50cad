"""Labelled text files (`label` and `text` columns): the one reader for `rnnserve eval` and for
`rnnserve train classifier`, torch-free.

- TSV (a `.tsv` file, or a header with tabs and no commas) is read literally: one row per line, fields
  split on tabs, no quoting, so a text that begins with `"` is just text. A line with another number of
  fields than the header is an error naming the line.
- CSV keeps standard quoting (a quoted field may hold commas, quotes doubled, newlines). A row with
  another number of fields than the header, or that the csv module cannot parse, is an error naming the
  line it starts on.

Nothing is dropped silently: the caller gets every row, and says how many it read.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path


class LabelledFileError(ValueError):
    """A labelled file that cannot be read as it is; the message names the file and the line."""


@dataclass
class Labelled:
    rows: list[tuple[str, str]]  # (label, text), in file order
    format: str                  # "tsv" or "csv"


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise LabelledFileError(f"{p}: no such file")
    if p.is_dir():
        raise LabelledFileError(f"{p}: is a folder, not a file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabelledFileError(f"{p}: not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); convert it first, "
                                "e.g. iconv -f latin1 -t utf-8") from None
    return text.lstrip("\ufeff").replace("\r\n", "\n")


def read_labelled(path: str | Path) -> Labelled:
    text = read_text(path)
    first = text.split("\n", 1)[0]
    tsv = str(path).endswith(".tsv") or ("\t" in first and "," not in first)
    rows = _tsv(text) if tsv else _csv(text, path)
    if not rows:
        raise LabelledFileError(f"{path}: empty file")
    header = [c.strip() for c in rows[0][1]]
    missing = [c for c in ("label", "text") if c not in header]
    if missing:
        raise LabelledFileError(f"{path}: missing column(s) {', '.join(missing)} "
                                f"(header has: {', '.join(c for c in header if c) or 'nothing'})")
    li, ti = header.index("label"), header.index("text")
    out = []
    for line, fields in rows[1:]:
        if len(fields) != len(header):
            raise LabelledFileError(f"{path}: line {line}: {len(fields)} field(s) where the header has "
                                    f"{len(header)}" + (" (a tab inside a text?)" if tsv else
                                                        " (an unbalanced quote or a stray comma?)"))
        out.append((fields[li].strip(), fields[ti]))
    return Labelled(out, "tsv" if tsv else "csv")


def _tsv(text: str) -> list[tuple[int, list[str]]]:
    return [(n, line.split("\t")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _csv(text: str, path) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text), strict=True)
    rows, start = [], 1
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as e:
        raise LabelledFileError(f"{path}: line {start}: cannot parse ({e})") from None
    return rows
