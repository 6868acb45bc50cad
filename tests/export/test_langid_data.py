"""The language identifier's multi-domain data (export/langid_data.py), on small made-up pages and fortunes:
no Debian package needed."""
import csv
import gzip
import random
import re

from export import langid_data as L

GROFF = r""".TH LS 1
.SH NAME
ls \- Verzeichnisinhalte auflisten
.SH BESCHREIBUNG
Auflisten von Informationen \(:uber die DATEIen (standardm\(:a\(ssig das aktuelle
Verzeichnis). Die Eintr\(:age werden alphabetisch sortiert.
.TP
.B \-a
.nf
ls -la /tmp | grep foo > out.txt
.fi
.PP
Beendigungsstatus ist 0, wenn alles in Ordnung ist.
"""

HTML = """<html><body><div class="para">Mit <code class="command">apt update</code> wird die Liste in
<code class="filename">/var/lib/apt/lists/</code> erneuert, bevor Pakete installiert werden.</div>
<pre class="screen"><code class="computeroutput">Reading package lists... Done</code></pre>
<p>Ein zweiter Absatz mit genug Worten darin.</p><script>var x = "kein Text hier";</script></body></html>"""


def test_man_pages_are_read_as_running_text_without_markup_or_code():
    paras = L.man_paragraphs(GROFF)
    assert "Auflisten von Informationen über die DATEIen (standardmäßig das aktuelle Verzeichnis). " \
           "Die Einträge werden alphabetisch sortiert." in paras  # groff escapes decoded, lines joined
    assert "Beendigungsstatus ist 0, wenn alles in Ordnung ist." in paras
    assert not any("grep" in p or p.startswith("-a") for p in paras)  # no-fill code and option words dropped


def test_english_man_pages_are_the_originals_of_translated_pages(tmp_path, monkeypatch):
    def page(path, body):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(f".TH X 1\n.SH NAME\n{body}\n".encode()))
    page(tmp_path / "man1/ls.1.gz", "List information about the files in the current directory, sorted.")
    page(tmp_path / "man5/passwd.5.gz", "The password file holds one line for every user account there is.")
    page(tmp_path / "man1/cloud-sdk-compute.1.gz", "Create Compute Engine virtual machine instances in a zone.")
    page(tmp_path / "de/man1/ls.1.gz", "Informationen über die Dateien im aktuellen Verzeichnis auflisten.")
    page(tmp_path / "pl/man5/passwd.5.gz", "Plik haseł zawiera po jednym wierszu dla każdego konta użytkownika.")
    page(tmp_path / "pl/man1/only-translated.1.gz", "Strona, której angielskiego oryginału nie zainstalowano.")
    monkeypatch.setattr(L, "MAN", tmp_path)
    # pages no other language translates (an SDK's thousands of generated pages) are not English man pages
    assert sorted(L.manpage_units("en")) == ["man/man1/ls.1.gz", "man/man5/passwd.5.gz"]
    assert list(L.manpage_units("de")) == ["man/man1/ls.1.gz"]
    assert sorted(L.manpage_units("pl")) == ["man/man1/only-translated.1.gz", "man/man5/passwd.5.gz"]


def test_documentation_keeps_inline_code_and_drops_code_blocks(tmp_path):
    page = tmp_path / "apt.html"
    page.write_text(HTML, encoding="utf-8")
    paras = L.html_paragraphs(page)
    assert paras[0] == ("Mit apt update wird die Liste in /var/lib/apt/lists/ erneuert, bevor Pakete "
                        "installiert werden.")  # inline code reads as part of the sentence
    assert paras[1:] == ["Ein zweiter Absatz mit genug Worten darin."]  # screen output and scripts dropped


def test_untranslated_remnants_are_dropped():
    english = {"This paragraph was never translated into German at all."}
    paras = ["This paragraph was never translated into German at all.",
             "Dieser Absatz ist übersetzt. This sentence is left in the English of the original, is it not?",
             "Ein ganz und gar deutscher Absatz über die Arbeit."]
    assert L.translated(paras, english) == ["Dieser Absatz ist übersetzt.",
                                            "Ein ganz und gar deutscher Absatz über die Arbeit."]


ENGLISH = {"the", "of", "file", "each", "from", "trailing", "default", "command", "quality", "service", "a", "in"}
OWN = {lang: set() for lang in L.LANGS if lang != "en"}
OWN["es"] |= {"de", "la", "el", "archivo", "cada", "a", "en"}
OWN["cs"] |= {"a", "soubor", "v"}


def test_english_inside_another_languages_text_is_recognised():
    inside = L.EnglishInside(ENGLISH, OWN)
    assert inside("a trailing delim (default newline) from each", "es")  # cut from a half-translated page
    assert inside("The apt-file Command", "cs")
    assert not inside("el archivo de cada usuario, from the default", "es")  # mixed, mostly Spanish
    assert not inside("Качество обслуживания - Quality of Service (или коротко QoS)", "ru")  # letters English lacks
    assert not inside("soubor file", "cs")  # one English word is not enough
    assert not inside("the default file of each command", "en")  # English text is English


def test_technical_tokens_go_between_words_and_change_nothing_else():
    tech = L.Technical(["alpha", "bravo", "charlie", "Delta", "échec", "it's", "ox"])
    assert tech.words == ["alpha", "bravo", "charlie", "delta", "échec"]  # words of 3-9 letters, lower-cased
    rng = random.Random(0)
    text = "ein ganz gewöhnlicher Satz aus Wörtern"
    made = [tech.insert(text, rng) for _ in range(200)]
    for m in made:
        extra = m.split()
        for w in text.split():
            extra.remove(w)  # every word of the text is still there, in order (checked below)
        assert 1 <= len(extra) <= 2 and all(any(a in t.lower() for a in tech.words) or len(t) == 2 for t in extra)
        assert [w for w in m.split() if w in text.split()] == text.split()
    assert len({tuple(m.split()) for m in made}) > 150  # options, paths, addresses, identifiers in many forms
    assert any(m.split()[0].startswith("--") for m in made) and any("@" in m for m in made)


def test_build_balances_languages_keeps_splits_apart_and_marks_some_snippets(tmp_path, monkeypatch):
    """`build` on the fortunes alone, from made-up entries: every language the same number of rows, no test
    text inside any training row, and technical tokens in about one training snippet in eight."""
    def entries(lang, *a, **k):
        return [f"{lang} Eintrag n{i:03d}x mit genug Worten darin, damit er lang genug ist " * 2 for i in range(300)]
    monkeypatch.setattr(L.F, "read_entries", entries)
    tech = L.Technical(["alpha", "bravo", "charlie", "delta"])
    report = L.build(tmp_path, ["fortunes"], seed=3, per_cell=100, per_cell_val=10, per_cell_test=20,
                     test_domains=["fortunes"], tech=tech, english_inside=L.EnglishInside(ENGLISH, OWN))
    rows = list(csv.DictReader(open(tmp_path / "train.csv", encoding="utf-8")))
    assert report["train"] == len(rows) == 8 * 2 * 100  # a snippet and a crop per draw
    assert {sum(r["label"] == l for r in rows) for l in L.LANGS} == {200}
    marked = sum(any(w in r["text"].lower() for w in tech.words) for r in rows)
    assert 0.03 < marked / len(rows) < 0.1  # one snippet in eight (of half the rows): ~6%
    test = list(csv.DictReader(open(tmp_path / "test_fortunes.csv", encoding="utf-8")))
    assert len(test) == 8 * 20
    def numbers(rs):
        return {(r["label"], w.lower()) for r in rs for w in r["text"].split() if re.fullmatch(r"n\d{3}x", w.lower())}
    assert numbers(test) and not numbers(test) & numbers(rows)  # entries are split before any snippet is cut


def test_test_texts_do_not_depend_on_the_training_recipe(tmp_path, monkeypatch):
    def entries(lang, *a, **k):
        return [f"{lang} Eintrag n{i:03d}x mit genug Worten darin, damit er lang genug ist " * 2 for i in range(300)]
    monkeypatch.setattr(L.F, "read_entries", entries)
    tech = L.Technical(["alpha", "bravo", "charlie", "delta"])
    a, b = tmp_path / "a", tmp_path / "b"
    inside = L.EnglishInside(ENGLISH, OWN)
    L.build(a, ["fortunes"], seed=3, per_cell=100, per_cell_test=20, tech=tech, test_domains=["fortunes"],
            english_inside=inside)
    L.build(b, [], seed=3, per_cell=50, per_cell_test=20, tech=tech, test_domains=["fortunes"],
            english_inside=inside)
    assert (a / "test_fortunes.csv").read_text() == (b / "test_fortunes.csv").read_text()
    assert (a / "train.csv").read_text() != (b / "train.csv").read_text()


def test_english_remnants_are_kept_out_of_training_rows_but_not_out_of_test_texts(tmp_path, monkeypatch):
    def entries(lang, *a, **k):
        native = [f"{lang} Eintrag n{i:03d}x mit genug Worten darin, damit er lang genug ist " * 2 for i in range(200)]
        return native + ["the default file of each command from the trailing service " * 3] * 100
    monkeypatch.setattr(L.F, "read_entries", entries)
    inside = L.EnglishInside(ENGLISH, OWN)
    L.build(tmp_path, ["fortunes"], seed=3, per_cell=100, per_cell_val=20, per_cell_test=40,
            test_domains=["fortunes"], tech=L.Technical(["alpha", "bravo"]), english_inside=inside)
    def rows(name):
        return list(csv.DictReader(open(tmp_path / name, encoding="utf-8")))
    for name in ("train.csv", "val.csv"):
        assert not [r for r in rows(name) if inside(r["text"], r["label"])]
        assert any(r["label"] == "en" and "default file" in r["text"] for r in rows(name))  # English keeps them
    assert [r for r in rows("test_fortunes.csv") if inside(r["text"], r["label"])]  # test texts as cut
