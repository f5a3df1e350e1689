"""Loads a classifier saved by `distil eval classify --save DIR` in transformers and checks it.

Usage: .venv/bin/python scripts/check_classifier.py DIR TEST.csv [--text-column text]

Loads DIR with AutoModelForSequenceClassification (fails on any missing or unexpected key),
prints the architecture and labels, and writes the predicted label of every text of TEST.csv
(one per line) to DIR/transformers_predictions.txt, for comparison with distil's predictions
(`distil` side: Classifier::load + predict). Not part of CI.
"""
import csv
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    model_dir, test_csv = sys.argv[1], sys.argv[2]
    column = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--text-column" else "text"
    model, info = AutoModelForSequenceClassification.from_pretrained(model_dir, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    print("architecture", type(model).__name__, "labels", model.config.id2label)
    print("loading info", info)
    if problems:
        sys.exit(f"error: loading {model_dir} reported {problems}")
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(test_csv, newline="") as f:
        texts = [row[column] for row in csv.DictReader(f)]
    preds = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            batch = tok(texts[i : i + 32], padding=True, truncation=True, max_length=64, return_tensors="pt")
            preds += model(**batch).logits.argmax(-1).tolist()
    out = f"{model_dir}/transformers_predictions.txt"
    with open(out, "w") as f:
        f.write("".join(f"{model.config.id2label[p]}\n" for p in preds))
    print(f"wrote {len(preds)} predictions to {out}")


if __name__ == "__main__":
    main()
