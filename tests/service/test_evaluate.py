"""`rnnserve eval`: every row of a labelled file is read (or an error names its line), and the report says how
many."""
import json

from tests.conftest import rnnserve


def test_eval_reads_every_row_of_a_tsv_with_quotes(artifacts, tmp_path):
    rows = [("soft" if i % 2 else "hard", ('"' if i % 9 == 0 else "") + ("aeiou ae" if i % 2 else "bcdfg krst"))
            for i in range(2400)]
    f = tmp_path / "quoted.tsv"
    f.write_text("label\ttext\n" + "".join(f"{l}\t{t}\n" for l, t in rows), encoding="utf-8")
    out = json.loads(rnnserve("eval", artifacts / "tinyclf", "--data", f, "--json").stdout)
    assert out["rows_read"] == 2400 and out["n"] == 2400 and out["format"] == "tsv"
    table = rnnserve("eval", artifacts / "tinyclf", "--data", f).stdout
    assert "2,400 rows read (tsv)" in table


def test_eval_names_the_line_it_cannot_read(artifacts, tmp_path):
    f = tmp_path / "broken.csv"
    f.write_text('label,text\nsoft,aeiou\nhard,"bcd\nsoft,ae\n', encoding="utf-8")
    r = rnnserve("eval", artifacts / "tinyclf", "--data", f, check=False)
    assert r.returncode == 2 and "line 3" in r.stderr and "Traceback" not in r.stderr
