#!/usr/bin/env python3
"""The Python side of scripts/bench_corpus.sh: HF `tokenizers` (Rust, parallel encode_batch)
encoding the non-empty lines of the given files with a tokenizer.json, as distil corpus build
does (no start/end tokens, no truncation, no padding). Prints one line of JSON.

    bench_corpus.py TOKENIZER_JSON FILE...
Only reading the lines happens outside the timed part, which favours Python.
"""
import json
import sys
import time

from tokenizers import Tokenizer


def main(tokenizer_json, files):
    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    lines, text_bytes = [], 0
    for path in files:
        with open(path, "rb") as f:
            for raw in f:
                text_bytes += len(raw)
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.strip():
                    lines.append(line)
    tok.encode_batch(lines[:2000], add_special_tokens=False)  # warm-up: thread pool, caches
    started = time.perf_counter()
    encodings = tok.encode_batch(lines, add_special_tokens=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(e.ids) for e in encodings)
    print(json.dumps({"lines": len(lines), "bytes": text_bytes, "tokens": tokens, "seconds": seconds,
                      "mb_per_s": text_bytes / 1e6 / seconds, "tokens_per_s": tokens / seconds}))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
