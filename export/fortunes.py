"""Debian's fortune files as training data for the bundled models.

`apt-get install fortunes fortunes-de fortunes-es fortunes-it fortunes-br
fortunes-ru fortunes-pl fortunes-cs` puts them under /usr/share/games/fortunes.
What is used, and why:

- en: the plain files at the top level (the `fortunes` packages' sets). Links
  there point into it/ (Italian) and are skipped; so is `brasil`, which is
  Portuguese.
- de, es, it, ru, pl, cs: the files in those folders. The `off/` sub-folders
  (offensive sets) are left out: the bundled models should not learn them.
- pt: `brasil` (fortunes-br), Brazilian Portuguese.
- cs is Czech mixed with some Slovak: entries with letters only Slovak uses
  (ä ô ĺ ľ ŕ) and none only Czech uses (ě ř ů) are dropped.
- `*.dat` are strfile indexes and `*.u8` links to UTF-8 copies; neither is read.
- Encodings: every file is decoded as UTF-8 first; a file that is not is
  tried in its language's legacy encodings (latin-1, iso-8859-2, koi8-r, ...)
  and the one used is reported. In the Debian 12 packages all are UTF-8.
- Overstrike sequences (`_\\b` underlining from old terminals) are removed.
"""
from __future__ import annotations

import csv
import random
import re
from pathlib import Path

from .data import DataError, split_fortunes

ROOT = Path("/usr/share/games/fortunes")
LANGS = ["en", "de", "es", "it", "pt", "ru", "pl", "cs"]
LEGACY = {"en": ["latin-1"], "de": ["latin-1"], "es": ["latin-1"], "it": ["latin-1"], "pt": ["latin-1"],
          "ru": ["koi8-r", "cp1251"], "pl": ["iso-8859-2", "cp1250"], "cs": ["iso-8859-2", "cp1250"]}
_OVERSTRIKE = re.compile(r".\x08")
_SLOVAK_ONLY = set("äôĺľŕÄÔĹĽŔ")
_CZECH_ONLY = set("ěřůĚŘŮ")


def language_files(root: Path = ROOT, langs: list[str] = LANGS) -> dict[str, list[Path]]:
    """The fortune files of each language in `langs` (every one: DataError naming those not installed)."""
    if not root.is_dir():
        raise DataError(f"{root}: not found; install the fortune packages: apt-get install fortunes fortunes-de "
                        "fortunes-es fortunes-it fortunes-br fortunes-ru fortunes-pl fortunes-cs")

    def plain(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
                      and p.suffix not in (".dat", ".u8") and not p.name.endswith("-pre.u8"))

    files = {"en": [p for p in plain(root) if p.name != "brasil"], "pt": [root / "brasil"]}
    for lang in ("de", "es", "it", "ru", "pl", "cs"):
        files[lang] = plain(root / lang) if (root / lang).is_dir() else []
    missing = [l for l in langs if not files[l] or not all(p.exists() for p in files[l])]
    if missing:
        raise DataError(f"{root}: no fortune files for {', '.join(missing)}")
    return files


def decode(path: Path, lang: str) -> tuple[str, str]:
    raw = path.read_bytes()
    for enc in ["utf-8"] + LEGACY[lang]:
        try:
            return raw.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path}: not UTF-8 nor {', '.join(LEGACY[lang])}")


def read_entries(lang: str, root: Path = ROOT, report: dict | None = None) -> list[str]:
    entries = []
    for path in language_files(root)[lang]:
        text, enc = decode(path, lang)
        if report is not None and enc != "utf-8":
            report.setdefault("converted", []).append(f"{path} ({enc})")
        text = _OVERSTRIKE.sub("", text).replace("\r\n", "\n")
        for e in split_fortunes(text):
            if lang == "cs" and (set(e) & _SLOVAK_ONLY) and not (set(e) & _CZECH_ONLY):
                if report is not None:
                    report["slovak_dropped"] = report.get("slovak_dropped", 0) + 1
                continue
            entries.append(e)
    return entries


def english_lm_text(out: Path, root: Path = ROOT) -> Path:
    """All English entries as one fortune file (entries between % lines)."""
    entries = read_entries("en", root)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(e + "%\n" for e in entries), encoding="utf-8")
    return out


def flat(text: str) -> str:
    return " ".join(text.split())


def snippet(text: str, rng: random.Random, lo: int = 20, hi: int = 200) -> str | None:
    """A piece of `text` of lo..hi characters, starting and ending at word boundaries."""
    words = text.split()
    if sum(len(w) + 1 for w in words) - 1 < lo:
        return None
    want = rng.randint(lo, hi)
    for _ in range(10):
        start = rng.randrange(len(words))
        out, n = [], -1
        for w in words[start:]:
            if n + 1 + len(w) > want and n >= lo:
                break
            out.append(w)
            n += 1 + len(w)
        if lo <= n <= max(hi, lo):
            return " ".join(out)
    return None


def write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows(rows)
