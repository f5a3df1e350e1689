"""transformers' side of scripts/bench_infer.sh, measured as `distil bench` measures: one warm-up
pass, then per repeat a batch-1 pass over the sentences (one at a time, tokenisation included,
timing each) and a pass in batches of 32 (padded to the longest of the batch); the encoder runs to
its last hidden state under torch.inference_mode with torch's threads = the cores distil uses.

  .venv/bin/python scripts/bench_infer.py --model DIR --texts FILE [--repeats N] --out RESULT.json
  .venv/bin/python scripts/bench_infer.py --write-rt-test FILE   # the sentiment test sentences

The result JSON has the fields of `distil bench --out` that the comparison reads.
"""
import argparse
import json
import os
import statistics
import time

p = argparse.ArgumentParser()
p.add_argument("--model")
p.add_argument("--texts")
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--threads", type=int, default=0, help="0: the cores this process may use")
p.add_argument("--out")
p.add_argument("--write-rt-test", metavar="FILE")
p.add_argument("--rt-dir", default=os.path.join(os.path.dirname(__file__), "..", "assets", "rt-sentiment"))
a = p.parse_args()

if a.write_rt_test:
    # The split `distil eval classify --task rt-sentiment` uses: snippet id divisible by 5 is
    # test; mean score 0 dropped.
    out = []
    with open(os.path.join(a.rt_dir, "movieReviewSnippets_GroundTruth.txt"), encoding="latin-1") as f:
        for line in f:
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) >= 3 and int(fields[0]) % 5 == 0 and float(fields[1]) != 0.0:
                out.append(fields[2].strip())
    with open(a.write_rt_test, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {len(out)} sentences to {a.write_rt_test}")
    raise SystemExit(0)

import torch  # noqa: E402  (not needed for --write-rt-test)
from transformers import AutoModel, AutoTokenizer  # noqa: E402

torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))
sentences = [s.strip() for s in open(a.texts, encoding="utf-8") if s.strip()]
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModel.from_pretrained(a.model).eval()
max_len = min(tok.model_max_length, model.config.max_position_embeddings)


def run(batch):
    enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
    model(**enc).last_hidden_state
    return int(enc["attention_mask"].sum())


def batch1():
    each = []
    start = time.perf_counter()
    for s in sentences:
        t = time.perf_counter()
        run([s])
        each.append(time.perf_counter() - t)
    return time.perf_counter() - start, each


def batch32():
    start = time.perf_counter()
    tokens = sum(run(sentences[i : i + 32]) for i in range(0, len(sentences), 32))
    return time.perf_counter() - start, tokens


with torch.inference_mode():
    batch1()
    batch32()
    b1_pass, b1_each, b32_pass = [], [], []
    for _ in range(a.repeats):
        s, each = batch1()
        b1_pass.append(s)
        b1_each += each
        s, tokens = batch32()
        b32_pass.append(s)

b32 = statistics.median(b32_pass)
result = {
    "texts": a.texts,
    "sentences": len(sentences),
    "repeats": a.repeats,
    "threads": torch.get_num_threads(),
    "engine": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
    f"attention {model.config._attn_implementation}",
    "models": [
        {
            "model": a.model,
            "batch1_pass_s": {"runs": b1_pass},
            "batch1_sentence_ms": 1e3 * statistics.median(b1_each),
            "batch32_pass_s": {"runs": b32_pass},
            "batch32_sentences_per_s": len(sentences) / b32,
            "batch32_tokens_per_s": tokens / b32,
        }
    ],
}
with open(a.out, "w") as f:
    json.dump(result, f, indent=1)
