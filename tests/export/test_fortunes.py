"""Fortune-file preparation for the bundled models, on a small fake fortune tree."""
import random

from export import fortunes as F


def make_tree(root):
    root.mkdir()
    (root / "people").write_text("Be nice.\n%\n_\bUnder_\blined words here\n%\n", encoding="utf-8")
    (root / "people.dat").write_bytes(b"\x00\x01")
    (root / "brasil").write_text("Bom dia a todos vocês.\n%\nObrigado pela ajuda.\n%\n", encoding="utf-8")
    (root / "luke").symlink_to(root / "people")  # a link (into it/ in the real tree) is skipped
    for lang, text in {"de": "Guten Morgen.\n%\nWie geht es dir?\n%\n", "es": "Buenos días.\n%\n¿Qué tal?\n%\n",
                       "it": "Buongiorno a tutti.\n%\nCome stai?\n%\n", "ru": "Доброе утро.\n%\nКак дела?\n%\n",
                       "cs": "Dobré ráno, jak se máš?\n%\nĽúbim ťa, ôsmy deň.\n%\nŘeka teče.\n%\n"}.items():
        (root / lang).mkdir()
        (root / lang / "set").write_text(text, encoding="utf-8")
    (root / "es" / "off").mkdir()
    (root / "es" / "off" / "rude").write_text("no\n%\n", encoding="utf-8")
    (root / "pl").mkdir()
    (root / "pl" / "old").write_bytes("Dzień dobry, żółw.\n%\nŁódź.\n%\n".encode("iso-8859-2"))


def test_files_entries_encodings_and_filters(tmp_path):
    root = tmp_path / "fortunes"
    make_tree(root)
    files = F.language_files(root)
    assert [p.name for p in files["en"]] == ["people"] and [p.name for p in files["pt"]] == ["brasil"]
    assert all("off" not in p.parts for p in files["es"])
    assert F.read_entries("en", root) == ["Be nice.\n", "Underlined words here\n"]  # overstrike removed
    report = {}
    assert F.read_entries("pl", root, report) == ["Dzień dobry, żółw.\n", "Łódź.\n"]
    assert report["converted"][0].endswith("(iso-8859-2)")
    cs = F.read_entries("cs", root, report)
    assert cs == ["Dobré ráno, jak se máš?\n", "Řeka teče.\n"] and report["slovak_dropped"] == 1


def test_snippets_cut_at_word_boundaries_within_bounds():
    rng = random.Random(0)
    text = " ".join(f"word{i}" for i in range(200))
    for _ in range(200):
        s = F.snippet(text, rng, 20, 60)
        assert 20 <= len(s) <= 60
        assert all(w.startswith("word") and w[4:].isdigit() for w in s.split())
    assert F.snippet("too short", rng) is None
