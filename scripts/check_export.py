"""check_export.py: does a checkpoint that distil wrote load in transformers, and compute what distil computes?

For each DIR (a Hugging Face checkpoint folder written by distil: `distil train`'s exported student,
`distil student init`, ...):
  1. AutoModelForMaskedLM.from_pretrained(DIR, output_loading_info=True): any missing, unexpected or
     mismatched tensor, or loading error message, is a failure (a silently random tensor is a wrong model).
  2. A small padded batch (3 rows of different lengths, right padding): the texts below through the
     folder's own tokenizer (AutoTokenizer), one row a sentence pair when the model has token types; or,
     without tokenizer files (or when the tokenizer reads the English texts as mostly unknown tokens),
     seeded random ids, never the pad id at a real position, the second half of the first row of
     token type 1 when the model has token types.
  3. transformers' forward (eval mode, eager attention, float32) against
     `target/release/distil forward --model DIR --input batch.json --out out.safetensors`:
     max |difference| of logits, last_hidden_state and every hidden_states.i, over the real (non-padding)
     positions. Above --tol (default 1e-4) on any of them: failure. Padding positions are printed for
     information only (their values mean nothing and neither side promises them).
Exit status 0 when every folder passes, 1 otherwise.

  .venv/bin/python scripts/check_export.py runs/my-run/student [more dirs] [--tol 1e-4] [--distil PATH]

Needs the fixture environment (scripts/setup_fixture_env.sh) and a release build of distil (it does not
build one: `cargo build --release`).
"""

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
TEXTS = [
    "The student keeps most of what the teacher knows, in half the layers.",
    "A short one.",
    ("Distillation trains a small model", "to match the outputs of a large one."),
]


def load_model(d):
    model, info = AutoModelForMaskedLM.from_pretrained(d, output_loading_info=True, attn_implementation="eager")
    problems = [f"{k}: {sorted(map(str, v))}" for k, v in info.items() if v]
    return model.float().eval(), problems


def accepts_token_types(model):
    return "token_type_ids" in inspect.signature(model.forward).parameters and getattr(model.config, "type_vocab_size", 0) > 1


def make_batch(d, model):
    """Right-padded rows as lists; where the ids came from."""
    cfg = model.config
    types = accepts_token_types(model)
    limit = cfg.max_position_embeddings - (cfg.pad_token_id or 0) - 2  # RoBERTa positions start after the pad id
    rows, type_rows, tok = [], [], None
    # transformers 5 makes an empty tokenizer for a folder without tokenizer files: look for them first.
    if any((Path(d) / f).is_file() for f in TOKENIZER_FILES):
        try:
            tok = AutoTokenizer.from_pretrained(d)
        except Exception as e:  # files that transformers cannot read
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    else:
        why = "no tokenizer files"
    if tok is not None:
        for text in TEXTS:
            a, b = text if isinstance(text, tuple) else (text, None)
            if b is not None and not types:
                a, b = f"{a} {b}", None
            enc = tok(a, b, truncation=True, max_length=min(limit, 64))
            rows.append(list(enc["input_ids"]))
            type_rows.append(list(enc.get("token_type_ids", [0] * len(enc["input_ids"]))))
        pad = tok.pad_token_id if tok.pad_token_id is not None else (cfg.pad_token_id or 0)
        ids = [i for r in rows for i in r if i not in tok.all_special_ids]
        if max(max(r) for r in rows) >= cfg.vocab_size:
            tok, why = None, f"the tokenizer's ids reach {max(max(r) for r in rows)}, vocabulary {cfg.vocab_size}"
        elif not ids or sum(i == tok.unk_token_id for i in ids) > len(ids) / 2:
            tok, why = None, "the tokenizer reads the English test texts as mostly unknown tokens"
        if tok is None:
            rows, type_rows = [], []
        else:
            source = f"tokenizer of {d}"
    if tok is None:
        g = np.random.default_rng(0)
        pad = cfg.pad_token_id or 0
        for n in (min(limit, 12), 7, 3):
            ids = g.integers(0, cfg.vocab_size - 1, n)
            rows.append([int(i) + int(i >= pad) for i in ids])  # skip the pad id
            type_rows.append([0] * (n - n // 2) + [1] * (n // 2) if types else [0] * n)
        source = f"random ids ({why})"
    width = max(map(len, rows))
    batch = {
        "input_ids": [r + [pad] * (width - len(r)) for r in rows],
        "attention_mask": [[1] * len(r) + [0] * (width - len(r)) for r in rows],
    }
    if types:
        batch["token_type_ids"] = [t + [0] * (width - len(t)) for t in type_rows]
    return batch, source


def check(d, distil, tol, work):
    print(f"== {d}")
    try:
        model, problems = load_model(d)
    except Exception as e:
        print(f"FAIL: transformers cannot load it: {type(e).__name__}: {e}")
        return False
    ok = True
    if problems:
        ok = False
        for p in problems:
            print(f"FAIL: loading info: {p}")
    else:
        print(f"loads in transformers as {type(model).__name__}: no missing, unexpected or mismatched tensors")
    batch, source = make_batch(d, model)
    mask = np.array(batch["attention_mask"], dtype=bool)
    print(f"batch: {mask.shape[0]} rows x {mask.shape[1]}, real lengths {mask.sum(1).tolist()}, {source}"
          + (", token types" if "token_type_ids" in batch else ""))
    batch_path, out_path = work / "batch.json", work / "out.safetensors"
    batch_path.write_text(json.dumps(batch))
    run = subprocess.run(
        [str(distil), "forward", "--model", str(d), "--input", str(batch_path), "--out", str(out_path)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        print(f"FAIL: distil forward exited with {run.returncode}:\n{run.stderr.strip()}")
        return False
    ours = load_file(str(out_path))
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True)
    theirs = {"logits": out.logits, "last_hidden_state": out.hidden_states[-1]}
    theirs.update({f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    for name, t in theirs.items():
        if name not in ours:
            print(f"FAIL: distil's output has no {name} (it has {sorted(ours)})")
            ok = False
            continue
        a, b = ours[name], t.numpy()
        if a.shape != b.shape:
            print(f"FAIL: {name}: distil {a.shape} vs transformers {b.shape}")
            ok = False
            continue
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        real, padded = diff[mask].max(), (diff[~mask].max() if (~mask).any() else 0.0)
        scale = np.abs(b[mask]).max()
        verdict = "ok" if real <= tol else "FAIL"
        ok &= real <= tol
        if name in ("logits", "last_hidden_state") or real > tol:
            print(f"{verdict}: {name:18} max |diff| {real:.2e} at real positions (values up to {scale:.3g}); "
                  f"padding positions {padded:.2e} (not checked)")
    layers = [n for n in theirs if n.startswith("hidden_states.")]
    worst = max(np.abs(ours[n][mask] - theirs[n].numpy()[mask]).max() for n in layers if n in ours)
    print(f"{'ok' if worst <= tol else 'FAIL'}: all {len(layers)} hidden states: max |diff| {worst:.2e}")
    print("PASS" if ok else "FAIL", d)
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--tol", type=float, default=1e-4, help="largest max |difference| allowed (default 1e-4)")
    p.add_argument("--distil", type=Path, default=ROOT / "target" / "release" / "distil", help="the distil binary")
    a = p.parse_args()
    if not a.distil.is_file():
        print(f"no distil binary at {a.distil}: build it first with\n  cargo build --release", file=sys.stderr)
        sys.exit(1)
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for d in a.dirs:
            if not (d / "config.json").is_file():
                print(f"== {d}\nFAIL: not a checkpoint folder (no config.json)")
                results.append(False)
                continue
            try:
                results.append(check(d, a.distil, a.tol, Path(work)))
            except Exception as e:
                print(f"FAIL {d}: {type(e).__name__}: {e}")
                results.append(False)
    print(f"{sum(results)} of {len(results)} checkpoints pass")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
