import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

WORDS = ("the cat sat on a mat and a dog ran to the park while rain fell over old town "
         "bright stars shine at night so we sing quiet songs").split()


def make_text(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + ".\n"
                   for _ in range(n_lines))


def make_fortunes(n: int = 120, seed: int = 0) -> str:
    rng = random.Random(seed)
    entries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) + "\n" for _ in range(n)]
    return "%\n".join(entries)


def make_labelled(n: int = 200, seed: int = 0) -> str:
    """Two easily told apart classes: vowel-heavy vs consonant-heavy strings."""
    rng = random.Random(seed)
    rows = ["label,text"]
    for i in range(n):
        if i % 2:
            rows.append("soft," + "".join(rng.choice("aeiou ") for _ in range(rng.randint(5, 40))))
        else:
            rows.append("hard," + "".join(rng.choice("bcdfgkrst ") for _ in range(rng.randint(5, 40))))
    return "\n".join(rows) + "\n"


def rnnserve(*args, check=True, cwd=None, env=None, timeout=600):
    p = subprocess.run([sys.executable, "-m", "rnnserve", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"rnnserve {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "tiny.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def csv_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "tiny.csv"
    p.write_text(make_labelled(), encoding="utf-8")
    return p
