#!/usr/bin/env python3
"""Plain English text, one sequence per line, from the files of unpacked Debian packages.

    extract_text.py corpus ROOT OUT_DIR   ROOT is where the .deb files were unpacked (dpkg-deb -x)
    extract_text.py sample TEXT_DIR FILE  the small committed test sample, from the extracted text

`corpus` writes OUT_DIR/wordnet.txt, fortunes.txt and jargon.txt:
  wordnet.txt   every WordNet 3.0 gloss (definition and its examples), one per line
  fortunes.txt  every fortune cookie joined onto one line; ASCII art and duplicates left out
  jargon.txt    the Jargon File's prose paragraphs, one per line, a blank line between entries
                (so that `distil corpus build --documents` packs an entry's paragraphs together)
Only the Python standard library is used.
"""
import gzip
import re
import sys
from pathlib import Path

WORDNET_PARTS = ["noun", "verb", "adj", "adv"]
SPACES = re.compile(r"\s+")
SENTENCE_END = tuple(".!?:;)]\"'”’")


def one_line(text):
    return SPACES.sub(" ", text).strip()


def wordnet(root):
    """Glosses follow ` | ` in each synset line of data.*; the licence header lines start with spaces."""
    for part in WORDNET_PARTS:
        with open(root / "usr/share/wordnet" / f"data.{part}", encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                gloss = one_line(line.split(" | ", 1)[1])
                if gloss:
                    yield gloss


def mostly_words(text):
    """ASCII art and tables are mostly punctuation; prose is mostly letters and spaces."""
    return sum(c.isalpha() or c == " " for c in text) >= 0.8 * len(text)


def fortunes(root):
    folder = root / "usr/share/games/fortunes"
    seen = set()
    for path in sorted(folder.iterdir()):
        # `.dat` files are indexes and `.u8` names are links to the same text.
        if path.suffix or path.is_symlink() or path.name in ("ascii-art", "art"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        text = re.sub(".\b", "", text)  # overstruck characters (bold/underline for terminals)
        for cookie in re.split(r"^%$", text, flags=re.M):
            line = one_line(cookie)
            if line and mostly_words(line) and line not in seen:
                seen.add(line)
                yield line


def jargon(root):
    """Paragraphs of the Jargon File; an entry starts at a `:term:` heading. Headings, tables and
    fragments (fewer than five words, or no closing punctuation, like contents lines) are dropped."""
    with gzip.open(root / "usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8") as f:
        text = f.read()
    started = False
    for block in re.split(r"\n\s*\n", text):
        para = one_line(block)
        if re.match(r":[^:]+:", para):
            if started:
                yield ""
            started = True
            continue
        if any(c in para for c in "│├┌└═─") or len(para.split()) < 5 or not para.endswith(SENTENCE_END):
            continue
        yield re.sub(r"\{([^{}]*)\}", r"\1", para)  # {cross-reference} -> cross-reference


def write_lines(path, lines):
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            count += bool(line)
    print(f"wrote {path}: {count} lines", file=sys.stderr)


def corpus(root, out):
    out.mkdir(parents=True, exist_ok=True)
    write_lines(out / "wordnet.txt", wordnet(root))
    write_lines(out / "fortunes.txt", fortunes(root))
    write_lines(out / "jargon.txt", jargon(root))


def sample(text_dir, path):
    """Every 500th gloss, every 50th fortune and every 60th Jargon File entry (with the blank lines
    between entries, for document mode): a few hundred real lines under 100 KB."""
    glosses = (text_dir / "wordnet.txt").read_text(encoding="utf-8").splitlines()[::500]
    cookies = (text_dir / "fortunes.txt").read_text(encoding="utf-8").splitlines()[::50]
    entries = (text_dir / "jargon.txt").read_text(encoding="utf-8").split("\n\n")[1::60]
    body = "\n".join(glosses + cookies) + "\n\n" + "\n\n".join(entries) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    print(f"wrote {path}: {len(body.encode())} bytes", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("corpus", "sample"):
        sys.exit(__doc__)
    {"corpus": corpus, "sample": sample}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
