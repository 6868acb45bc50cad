"""Text in eight languages from four kinds of source that Debian ships: the training and test data of the
bundled language identifier (`make models`, `make langid-report`).

Domains and where they come from (docs/models.md lists packages, licences and sizes):

- `fortunes`: the fortune files (export/fortunes.py): quotations, jokes, verse.
- `manpages`: translated manual pages (`manpages-de` ... `manpages-cs`, `manpages-pt-br`; in English the
  installed originals of the pages those translate, from `manpages` and the tools' own packages). groff
  markup is stripped and its character escapes decoded; paragraphs that also occur in the English page of
  the same name are untranslated remnants and dropped, so are code-like lines.
- `docs`: the Debian Administrator's Handbook (`debian-handbook`, all eight languages) and the Debian
  installation guide (`installation-guide-amd64`, seven: no Polish). HTML paragraphs, list items and table
  cells with their inline code (commands, file names, options: technical text reads like that); blocks of
  code and screen output dropped; a paragraph that also occurs in the English edition of the same page is
  untranslated and dropped.
- `words`: spelling dictionaries' word lists (`wamerican`, `wngerman`, `wspanish`, `witalian`,
  `wportuguese`, `wbrazilian`, `wpolish`; Russian and Czech from `hunspell-ru` and `hunspell-cs`, affix
  flags removed): one to three random words, the shortest inputs a user sends.

Technical tokens — options, identifiers, paths, addresses, key=value — are spelt the same in every
language. One training snippet in eight gets one or two of them, made from words of all eight word lists'
training splits (`Technical`), so that the model learns they say nothing about the language around them.
A training or validation snippet of another language that is mostly English words (what is left of a
half-translated page once it is cut small) is not drawn (`EnglishInside`).

Translation catalogues (.po/.mo) are never read: that family of text is kept for judging the model.
Each unit (a fortune, a man page, a handbook page, a word) belongs to one split only — train, validation
or test — chosen by a hash of its name, before any snippet is cut.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import html.parser
import random
import re
import unicodedata
from pathlib import Path

from . import fortunes as F

LANGS = F.LANGS
DOMAINS = ["fortunes", "manpages", "docs", "words"]
MAN = Path("/usr/share/man")
MAN_DIRS = {"en": "", "de": "de", "es": "es", "it": "it", "pt": "pt_BR", "ru": "ru", "pl": "pl", "cs": "cs"}
HANDBOOK = Path("/usr/share/doc/debian-handbook/html")
HANDBOOK_DIRS = {"en": "en-US", "de": "de-DE", "es": "es-ES", "it": "it-IT", "pt": "pt-BR", "ru": "ru-RU",
                 "pl": "pl-PL", "cs": "cs-CZ"}
GUIDE = Path("/usr/share/doc/installation-guide-amd64")
GUIDE_DIRS = {"en": "en", "de": "de", "es": "es", "it": "it", "pt": "pt", "ru": "ru", "cs": "cs"}
WORDS = {"en": ["/usr/share/dict/american-english"], "de": ["/usr/share/dict/ngerman"],
         "es": ["/usr/share/dict/spanish"], "it": ["/usr/share/dict/italian"],
         "pt": ["/usr/share/dict/brazilian", "/usr/share/dict/portuguese"], "pl": ["/usr/share/dict/polish"],
         "ru": ["/usr/share/hunspell/ru_RU.dic"], "cs": ["/usr/share/hunspell/cs_CZ.dic"]}
PACKAGES = ("manpages manpages-de manpages-es manpages-it manpages-pl manpages-pt-br manpages-ru manpages-cs "
            "debian-handbook installation-guide-amd64 wamerican wngerman wspanish witalian wportuguese wbrazilian "
            "wpolish hunspell-ru hunspell-cs")


def split_of(name: str, seed: int = 0) -> str:
    """train (80%), val (10%) or test (10%), fixed by the unit's name."""
    h = int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest(), 16) % 100
    return "train" if h < 80 else "val" if h < 90 else "test"


def flat(text: str) -> str:
    return " ".join(text.split())


def letters(text: str) -> float:
    return sum(c.isalpha() for c in text) / max(1, len(text))


def prose(p: str) -> bool:
    """A paragraph of words, not code, paths or option lists."""
    return len(p) >= 20 and letters(p) > 0.7 and len(p.split()) >= 3


# English function words that are no word of the other seven languages: a translated page's paragraph full of
# them is an English remnant (an older original than the English edition installed, so not caught verbatim).
_ENGLISH = set("the and of is that for with this are you which from will your have been was were can would "
               "should these those there their they what when where about into than then also".split())


def english_remnant(p: str) -> bool:
    tokens = [t.strip(".,;:()\"'!?").lower() for t in p.split()]
    return sum(t in _ENGLISH for t in tokens) >= max(2, 0.12 * len(tokens))


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-ZÀ-ÖØ-ÞА-ЯЁ])")


def translated(paras: list[str], original: set[str]) -> list[str]:
    """The paragraphs of a translated page without untranslated remnants: a paragraph found verbatim in the
    English original, or English sentences inside a half-translated paragraph."""
    out = []
    for p in paras:
        if p in original:
            continue
        kept = " ".join(s for s in _SENTENCE.split(p) if not english_remnant(s))
        if prose(kept):
            out.append(kept)
    return out


# ------------------------------------------------------------------------------------------------ man pages

_ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327", "v": "\u030c",
            "o": "\u030a"}
_NAMED = {"ss": "ß", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "em": "—", "en": "–",
          "hy": "-", "bu": "•", "co": "©", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "ti": "~", "ha": "^",
          "bq": "„", "Bq": "„", "de": "°", "mu": "×", "r!": "¡", "r?": "¿", "AE": "Æ", "ae": "æ", "Ao": "Å"}
_ESCAPE = re.compile(r"\\(?:\((..)|\[([^\]]*)\]|\*(?:\((..)|\[[^\]]*\]|.)|f(?:\(..|\[[^\]]*\]|.)|s[-+]?\d+|"
                     r"[&|^%c]|e|-|\s|.)")
_TEXT_MACROS = re.compile(r"^\.(?:B|I|BR|IR|RB|RI|BI|IB|SH|SS|SM|SB)\s+(.*)$")
_BREAKS = re.compile(r"^\.(?:PP|P|LP|SH|SS|TP|IP|HP|RS|RE|sp|br|TQ)\b")


def _char(code: str) -> str:
    if code in _NAMED:
        return _NAMED[code]
    if len(code) == 2 and code[0] in _ACCENTS and code[1].isalpha():
        return unicodedata.normalize("NFC", code[1] + _ACCENTS[code[0]])
    if code.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", code):
        return chr(int(code[1:], 16))
    return ""


def _unescape(line: str) -> str:
    def repl(m):
        if m.group(1) or m.group(2):
            return _char(m.group(1) or m.group(2))
        if m.group(3) == "Aq" or m.group(0) == "\\*(Aq":
            return "'"
        s = m.group(0)
        return {"\\-": "-", "\\e": "\\", "\\ ": " "}.get(s, "")
    return _ESCAPE.sub(repl, line)


def man_paragraphs(raw: str) -> list[str]:
    """Running text of a groff page: paragraphs, markup and no-fill (code) blocks removed."""
    paras, cur, nofill = [], [], False
    for line in raw.splitlines():
        if line.startswith((".nf", ".EX", ".TS")):  # code examples and tables
            nofill = True
            continue
        if line.startswith((".fi", ".EE", ".TE")):
            nofill = False
            continue
        if nofill or line.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if line.startswith((".", "'")):
            m = _TEXT_MACROS.match(line)
            if _BREAKS.match(line) or (m and line[1:3] in ("SH", "SS")):
                if cur:
                    paras.append(flat(" ".join(cur)))
                cur = []
            if m and line[1:3] not in ("SH", "SS"):
                cur.append(_unescape(m.group(1).replace('"', "")))
            continue
        cur.append(_unescape(line))
    if cur:
        paras.append(flat(" ".join(cur)))
    return [p for p in paras if prose(p)]


def _read_man(path: Path) -> str:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    for enc in ("utf-8", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return ""


def _man_pages(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("man[1-8]/*") if p.is_file())


def manpage_units(lang: str) -> dict[str, list[str]]:
    """{page name: paragraphs} of one language's man pages; untranslated paragraphs dropped.

    English pages are the originals of the pages at least one other language translates: core tools, system
    calls and file formats, the same kind of page as the translations, whatever else the machine has
    installed (not all of /usr/share/man: on one VM image 16,631 of its 17,869 section-1 pages were one
    cloud SDK's generated option reference, and English "manual pages" meant that SDK)."""
    if lang == "en":
        translated_names = {(p.parent.name, p.name) for d in MAN_DIRS.values() if d for p in _man_pages(MAN / d)}
        pages = [MAN / sec / name for sec, name in sorted(translated_names) if (MAN / sec / name).is_file()]
    else:
        pages = _man_pages(MAN / MAN_DIRS[lang])
    units = {}
    for p in pages:
        paras = man_paragraphs(_read_man(p))
        if lang != "en":
            orig = MAN / p.parent.name / p.name
            paras = translated(paras, set(man_paragraphs(_read_man(orig))) if orig.exists() else set())
        if paras:
            units[f"man/{p.parent.name}/{p.name}"] = paras
    return units


# --------------------------------------------------------------------------------------------------- HTML docs

class _Paragraphs(html.parser.HTMLParser):
    BLOCKS = {"p", "li", "td", "th", "dd", "dt", "h1", "h2", "h3", "h4", "title", "caption"}
    SKIP = {"pre", "script", "style", "screen"}  # blocks of code and screen output; inline code is kept

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paras, self.cur, self.depth, self.skip = [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data):
        if not self.skip:
            self.cur.append(data)

    def _flush(self):
        text = flat("".join(self.cur))
        if text:
            self.paras.append(text)
        self.cur = []


def html_paragraphs(path: Path) -> list[str]:
    p = _Paragraphs()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    p._flush()
    return [x for x in p.paras if prose(x)]


def docs_units(lang: str) -> dict[str, list[str]]:
    """{document page: paragraphs} from the handbook and the installation guide; paragraphs that also occur
    in the English edition of the same page are untranslated and dropped."""
    units = {}
    for root, dirs in ((HANDBOOK, HANDBOOK_DIRS), (GUIDE, GUIDE_DIRS)):
        if lang not in dirs or not (root / dirs[lang]).is_dir():
            continue
        for page in sorted((root / dirs[lang]).glob("*.html")):
            paras = html_paragraphs(page)
            if lang != "en":
                orig = root / dirs["en"] / page.name
                paras = translated(paras, set(html_paragraphs(orig)) if orig.exists() else set())
            if paras:
                units[f"{root.name}/{page.name}"] = paras
    return units


# ------------------------------------------------------------------------------------------------- word lists

@functools.lru_cache(maxsize=None)
def words(lang: str) -> list[str]:
    out = []
    for f in WORDS[lang]:
        lines = Path(f).read_text(encoding="utf-8", errors="replace").splitlines()
        if f.endswith(".dic"):
            lines = lines[1:]  # the first line of a hunspell .dic is the word count
        for w in lines:
            w = w.split("/")[0].strip()
            if len(w) >= 2 and w.isalpha() and not w.isupper():
                out.append(w)
    return sorted(set(out))


def training_words(lang: str) -> list[str]:
    """The words of a language's list in the training split: what `Technical` and `EnglishInside` may use."""
    return [w for w in words(lang) if split_of("word/" + w) == "train"]


def word_units(lang: str, rng: random.Random, n: int = 6000) -> dict[str, list[str]]:
    """Groups of one to three words, each word in one split only (by hash)."""
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for w in words(lang):
        by_split[split_of("word/" + w)].append(w)
    units = {}
    for split, pool in by_split.items():
        k = n if split == "train" else n // 8
        for i in range(k):
            units[f"words/{split}/{i}"] = [" ".join(rng.choice(pool) for _ in range(rng.choice((1, 1, 2, 3))))]
    return units


class Technical:
    """Technical tokens made from words: `--dry-run`, `-v`, `MAX_PATH`, `/usr/share/doc`,
    `name@example.org`, `https://www.example.org/help`, `file.conf`, `mode=fast`, `getValue()` — and the same
    shapes of German, Russian or Czech words, as translated software and documentation have them."""

    FORMS = ("--{a}-{b}", "--{a}", "-{c}", "--{a}={B}", "{A}_{B}", "/usr/{a}/{b}", "~/.{a}/{b}",
             "{a}@{b}.org", "https://www.{a}.com/{b}", "{a}.conf", "{a}_{b}.py", "{a}={b}", "{a}{Bc}()",
             "<{a}>", "[{A}]", "{a}-{b}-{n}")

    def __init__(self, pool: list[str]):
        self.words = sorted({w.lower() for w in pool if w.isalpha() and 3 <= len(w) <= 9})

    @classmethod
    def from_word_list(cls) -> "Technical":
        """From the training split of all eight word lists (no word the `words` test texts hold). Every language's
        words, not English only: translated software names its options and files in its own language too, and
        tokens of English words alone put English words into every language's training text."""
        return cls([w for lang in LANGS for w in training_words(lang)])

    def token(self, rng: random.Random) -> str:
        a, b = rng.choice(self.words), rng.choice(self.words)
        return rng.choice(self.FORMS).format(a=a, b=b, A=a.upper(), B=b.upper(), Bc=b.capitalize(),
                                             c=rng.choice("abcdefhlnqrsvx"), n=rng.randint(0, 99))

    def insert(self, text: str, rng: random.Random) -> str:
        """`text` with one or two tokens put between its words."""
        words_ = text.split()
        for _ in range(rng.choice((1, 1, 2))):
            words_.insert(rng.randint(0, len(words_)), self.token(rng))
        return " ".join(words_)


class EnglishInside:
    """Snippets of another language's text that are mostly English: a remnant of a half-translated page cut
    small (`a trailing delim (default newline) from each` among Spanish man pages, `The apt-file Command` in the
    Czech handbook). `translated` drops whole paragraphs and sentences; these are what is left once a snippet or
    crop is cut. Kept in training they teach the model that English words may be any language (dropping them:
    +1.0 point with fortunes left out, same machine and budget; docs/models.md). A snippet counts
    when at least two of its words are English words that are not words of its own language, and they are at
    least three in five of its words that belong to either language (a word with letters English lacks counts
    for its own: `Качество обслуживания - Quality of Service` stays Russian). The lexicons are the training
    splits of the word lists, as `Technical`'s."""

    def __init__(self, english: set[str], own: dict[str, set[str]]):
        self.english, self.own = english, own

    @classmethod
    def from_word_lists(cls) -> "EnglishInside":
        lex = {lang: {w.lower() for w in training_words(lang)} for lang in LANGS}
        return cls(lex.pop("en"), lex)

    def __call__(self, text: str, lang: str) -> bool:
        if lang == "en":
            return False
        own, english, o = self.own[lang], 0, 0
        for w in re.findall(r"[^\W\d_]+", text.lower()):
            if w in own or not w.isascii():
                o += 1
            elif w in self.english:
                english += 1
        return english >= 2 and english >= 0.6 * (english + o)


# ------------------------------------------------------------------------------------------------ all of it

def units(domain: str, lang: str, rng: random.Random) -> dict[str, list[str]]:
    """{unit name: texts} of one language in one domain."""
    if domain == "fortunes":
        return {f"fortune/{i}": [flat(e)] for i, e in enumerate(F.read_entries(lang)) if len(flat(e)) >= 20}
    if domain == "manpages":
        return manpage_units(lang)
    if domain == "docs":
        return docs_units(lang)
    if domain == "words":
        return word_units(lang, rng)
    raise ValueError(domain)


def split_name(domain: str, unit: str, seed: int) -> str:
    if domain == "words":
        return unit.split("/")[1]
    return split_of(unit, seed)


def crop(text: str, rng: random.Random, lo: int = 10, hi: int = 60) -> str:
    """A piece of lo..hi characters cut anywhere (mid-word too, as a 30-character prefix is)."""
    if len(text) <= lo:
        return text
    n = rng.randint(lo, min(hi, len(text)))
    start = rng.randint(0, len(text) - n)
    return text[start:start + n].strip() or text[:n]


def recase(text: str, rng: random.Random) -> str:
    """Text as people also type it: one in ten all lower case, one in thirty all capitals."""
    r = rng.random()
    return text.lower() if r < 0.1 else text.upper() if r < 0.133 else text


def build(out: Path, domains: list[str], seed: int = 0, per_cell: int = 10000, per_cell_val: int = 250,
          per_cell_test: int = 300, test_domains: list[str] | None = None, longest: int = 120,
          tech: Technical | None = None, english_inside: EnglishInside | None = None) -> dict:
    """CSV files under `out`: train.csv and val.csv from `domains` (per language and domain `per_cell`
    samples: a word-bounded snippet of 20-`longest` characters, one in eight with technical tokens put in,
    and as many crops of 10-60 characters; 10,000 rather than 4,000, so that 1,080 s of training read
    each row 1.7-2.7 times rather than 4-6: docs/models.md, leave one domain out), and
    test_<domain>.csv for every domain in `test_domains` (default: all): snippets of 20-300 characters (word
    groups for `words`) from units no training file saw. Training and validation snippets that are mostly
    English in another language's rows are not drawn (`EnglishInside`); test texts are kept as cut."""
    rng = random.Random(seed)
    tech = tech or Technical.from_word_list()
    english_inside = english_inside or EnglishInside.from_word_lists()
    report: dict = {"domains": domains, "cells": {}}
    train, val, tests = [], [], {d: [] for d in (test_domains or DOMAINS)}
    for dom in DOMAINS:
        if dom not in domains and dom not in tests:
            continue
        for lang in LANGS:
            pools: dict[str, list[str]] = {"train": [], "val": [], "test": []}
            for name, texts in units(dom, lang, random.Random(f"{seed}/{dom}/{lang}")).items():
                pools[split_name(dom, name, seed)] += texts
            report["cells"][f"{dom}/{lang}"] = {k: len(v) for k, v in pools.items()}

            def draw(pool, k, lo, hi, rng, clean=True):
                made, tries = [], 0
                while len(made) < k and pool and tries < 50 * k:
                    tries += 1
                    t = rng.choice(pool)
                    s = t if dom == "words" else F.snippet(t, rng, lo, hi)
                    if s and not (clean and english_inside(s, lang)):
                        made.append(s)
                return made
            if dom in domains:
                for s in draw(pools["train"], per_cell, 20, longest, rng):
                    t = tech.insert(s, rng) if dom != "words" and rng.random() < 0.125 else s
                    # a crop of a mixed snippet can be its English part: cut again (the snippet itself at worst)
                    c = next((c for c in (crop(s, rng) for _ in range(5)) if not english_inside(c, lang)), s)
                    train += [(lang, recase(t, rng)), (lang, c)]
                val += [(lang, s) for s in draw(pools["val"], per_cell_val, 20, longest,
                                                random.Random(f"{seed}/val/{dom}/{lang}"))]
            if dom in tests:
                # the test texts of a domain depend on nothing else: not on the training recipe, nor on which
                # domains are trained
                tests[dom] += [(lang, s) for s in draw(pools["test"], per_cell_test, 20, 300,
                                                       random.Random(f"{seed}/test/{dom}/{lang}"), clean=False)]
    rng.shuffle(train)
    F.write_csv(out / "train.csv", train)
    F.write_csv(out / "val.csv", val)
    for dom, rows in tests.items():
        F.write_csv(out / f"test_{dom}.csv", rows)
    report.update(train=len(train), val=len(val), tests={d: len(r) for d, r in tests.items()})
    return report
