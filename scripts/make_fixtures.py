"""make_fixtures.py: the oracle for distil's tests. Writes tests/fixtures/ with transformers itself.

What it makes (all float32, all small; the whole folder stays under ~3 MB):

  tests/fixtures/models/<name>/           tiny random checkpoints written by transformers' save_pretrained
      config.json, model.safetensors      (bert_sharded: model-0000k-of-0000n.safetensors + index;
                                           bert_relu_bin: pytorch_model.bin, see below)
      expected/batch0.json, batch1.json   input_ids, attention_mask (right padding), token_type_ids (BERT
                                          models with type_vocab_size > 1)
      expected/batch0.safetensors, ...    last_hidden_state, hidden_states.0 .. hidden_states.<layers>
                                          (0 = embedding output), logits (MLM models), pooler_output
                                          (bert_encoder)
  tests/fixtures/minilm/                  all-MiniLM-L6-v2 on three sentences: inputs.json,
                                          expected.safetensors (last_hidden_state, hidden_states.0..6,
                                          mean_pooled), expected.json (token ids, mean-pooled cosines)
  tests/fixtures/antiberty/               AntiBERTy fill-mask on a heavy chain: fillmask.json (text,
                                          input_ids, masked positions, top-5 tokens and probabilities),
                                          expected.safetensors (logits, last_hidden_state)
  tests/fixtures/distill/                 students copied by hand from four of the tiny teachers, batches
                                          with MLM labels, distiller.py's loss and its gradients: written
                                          by scripts/make_loss_fixtures.py (see there), called at the end

How to run (from the repository root):

  scripts/setup_fixture_env.sh              # once: .venv with the pinned torch/transformers
  .venv/bin/python scripts/make_fixtures.py # regenerates everything; fetches assets/ if missing

Determinism: every parameter value and every input id comes from numpy's PCG64 generator with a fixed
seed (bit-identical on every machine), torch.manual_seed is set as well, torch runs on one CPU thread
with eager attention, and old outputs are deleted first. Re-running reproduces the same bytes on the
same machine and library versions (other CPUs may differ in the last bits of the float outputs, never
in the weights or inputs). `--check` regenerates into a temporary folder and compares sha256 sums.

Weights: after the model is built from its config, EVERY parameter is overwritten: LayerNorm weights
~ N(1, 0.5), the BERT pooler's dense weight ~ N(0, 0.1) (so its tanh is not saturated), everything else
~ N(0, 0.3). The script asserts that attention is far from uniform (and
far from one-hot) and prints the statistics.

transformers >= 5 can only save safetensors, so bert_relu_bin's pytorch_model.bin is written the way
transformers 4.x save_pretrained(safe_serialization=False) wrote it: torch.save(model.state_dict()),
tied tensors stored once and referenced by both names. Every checkpoint is re-loaded with
from_pretrained (no missing or unexpected keys allowed) and must reproduce the expected outputs exactly.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    DistilBertConfig,
    DistilBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"

LN_MEAN, LN_STD = 1.0, 0.5
PARAM_STD = 0.3
POOLER_STD = 0.1


# ----------------------------------------------------------------------------------------------
# The tiny models
# ----------------------------------------------------------------------------------------------

def bert_config(**kw):
    base = dict(
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    base.update(kw)
    return BertConfig(**base)


# name -> (seed, model class, config, save mode, batch shapes [(rows, seq)])
MODELS = {
    "bert_tied": (
        101,
        BertForMaskedLM,
        lambda: bert_config(
            vocab_size=99, hidden_size=45, num_attention_heads=3, num_hidden_layers=2,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
            hidden_act="gelu", tie_word_embeddings=True, layer_norm_eps=1e-12,
        ),
        "safetensors",
    ),
    "bert_untied": (
        102,
        BertForMaskedLM,
        lambda: bert_config(
            vocab_size=101, hidden_size=40, num_attention_heads=5, num_hidden_layers=3,
            intermediate_size=52, max_position_embeddings=64, type_vocab_size=3,
            hidden_act="gelu_new", tie_word_embeddings=False, layer_norm_eps=1e-7,
        ),
        "safetensors",
    ),
    "bert_relu_bin": (
        103,
        BertForMaskedLM,
        lambda: bert_config(
            vocab_size=97, hidden_size=30, num_attention_heads=3, num_hidden_layers=2,
            intermediate_size=48, max_position_embeddings=64, type_vocab_size=2,
            hidden_act="relu",
        ),
        "bin",
    ),
    "bert_sharded": (
        104,
        BertForMaskedLM,
        lambda: bert_config(
            vocab_size=99, hidden_size=45, num_attention_heads=3, num_hidden_layers=4,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
            hidden_act="gelu", tie_word_embeddings=True, layer_norm_eps=1e-12,
        ),
        "sharded",
    ),
    "bert_encoder": (
        105,
        BertModel,
        lambda: bert_config(
            vocab_size=99, hidden_size=45, num_attention_heads=3, num_hidden_layers=2,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
            hidden_act="gelu", layer_norm_eps=1e-12,
        ),
        "safetensors",
    ),
    "roberta": (
        106,
        RobertaForMaskedLM,
        lambda: RobertaConfig(
            vocab_size=103, hidden_size=36, num_attention_heads=3, num_hidden_layers=2,
            intermediate_size=41, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            max_position_embeddings=70, type_vocab_size=1, layer_norm_eps=1e-5,
            hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        ),
        "safetensors",
    ),
    "distilbert": (
        107,
        DistilBertForMaskedLM,
        lambda: DistilBertConfig(
            vocab_size=95, dim=35, n_heads=5, n_layers=3, hidden_dim=50, activation="gelu",
            max_position_embeddings=64, sinusoidal_pos_embds=False, dropout=0.0,
            attention_dropout=0.0,
        ),
        "safetensors",
    ),
    "distilbert_relu": (
        108,
        DistilBertForMaskedLM,
        lambda: DistilBertConfig(
            vocab_size=95, dim=30, n_heads=3, n_layers=2, hidden_dim=44, activation="relu",
            max_position_embeddings=64, sinusoidal_pos_embds=False, dropout=0.0,
            attention_dropout=0.0,
        ),
        "safetensors",
    ),
}

# batch name -> (rows, sequence length, real length of each row)
BATCHES = {
    "batch0": (3, 11, [11, 7, 4]),
    "batch1": (2, 17, [13, 17]),
}
SHARD_SIZE = "100KB"


def is_layer_norm_weight(name):
    flat = name.lower().replace("_", "")
    return "layernorm" in flat and name.endswith(".weight")


def randomize(model, seed):
    """Overwrites every parameter (tied ones once) with seeded normal values."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_layer_norm_weight(name):
                mean, std = LN_MEAN, LN_STD
            elif name.startswith(("pooler.dense.weight", "bert.pooler.dense.weight")):
                mean, std = 0.0, POOLER_STD  # keeps tanh out of saturation
            else:
                mean, std = 0.0, PARAM_STD
            values = rng.standard_normal(tuple(p.shape), dtype=np.float32) * np.float32(std)
            values = values + np.float32(mean)
            p.copy_(torch.from_numpy(values))
        # transformers 4.x made decoder.bias the very tensor of the head's own bias
        # (cls.predictions.decoder.bias is cls.predictions.bias); transformers 5 unties the two when
        # tie_word_embeddings is false. Keep them equal, as every real checkpoint has them.
        params = dict(model.named_parameters())
        for name, p in params.items():
            if name.endswith(".decoder.bias"):
                head_bias = params.get(name[: -len(".decoder.bias")] + ".bias")
                if head_bias is not None:
                    p.copy_(head_bias)


def make_inputs(config, kind, seed, rows, seq, lengths):
    """Right-padded ids with the model's pad id; no pad id at real positions."""
    rng = np.random.default_rng(seed)
    pad = config.pad_token_id
    ids = np.full((rows, seq), pad, dtype=np.int64)
    mask = np.zeros((rows, seq), dtype=np.int64)
    types = np.zeros((rows, seq), dtype=np.int64)
    n_types = getattr(config, "type_vocab_size", 0) if kind == "bert" else 0
    for r, n in enumerate(lengths):
        if kind == "roberta":
            body = rng.integers(3, config.vocab_size, size=n - 2)  # skip <s>=0, <pad>=1, </s>=2
            row = np.concatenate([[config.bos_token_id], body, [config.eos_token_id]])
        else:
            row = rng.integers(0, config.vocab_size - 1, size=n)
            row = row + (row >= pad)  # every id except pad
        ids[r, :n] = row
        mask[r, :n] = 1
        if n_types > 1:
            # contiguous segments 0, 1, (2): split points in the real part
            cuts = sorted(rng.choice(np.arange(1, n), size=n_types - 1, replace=False))
            for t, c in enumerate(cuts, start=1):
                types[r, c:n] = t
    batch = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if n_types > 1:
        batch["token_type_ids"] = types.tolist()
    return batch


def forward(model, batch, attentions=False):
    kw = {k: torch.tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        return model(**kw, output_hidden_states=True, output_attentions=attentions, return_dict=True)


def outputs_to_tensors(out, n_layers):
    hs = out.hidden_states
    assert len(hs) == n_layers + 1, (len(hs), n_layers)
    t = {"last_hidden_state": hs[-1]}
    if getattr(out, "last_hidden_state", None) is not None:
        assert torch.equal(out.last_hidden_state, hs[-1])
    for i, h in enumerate(hs):
        t[f"hidden_states.{i}"] = h
    if getattr(out, "logits", None) is not None:
        t["logits"] = out.logits
    if getattr(out, "pooler_output", None) is not None:
        t["pooler_output"] = out.pooler_output
    return {k: v.detach().to(torch.float32).clone().contiguous() for k, v in t.items()}


def statistics(out, batch):
    """Attention sharpness and activation ranges, over real (unpadded) positions only."""
    mask = torch.tensor(batch["attention_mask"], dtype=torch.bool)
    n_real = mask.sum(-1)
    max_probs, uniform = [], []
    for att in out.attentions:  # [batch, heads, q, k]
        for b in range(att.shape[0]):
            n = int(n_real[b])
            a = att[b, :, :n, :n]
            max_probs.append(a.max(-1).values.flatten())
            uniform.append(torch.full((a.shape[0] * n,), 1.0 / n))
    max_probs = torch.cat(max_probs)
    uniform = torch.cat(uniform)
    s = {
        "attn_max_mean": float(max_probs.mean()),
        "attn_max_min": float(max_probs.min()),
        "uniform_mean": float(uniform.mean()),
        "attn_ratio_min": float((max_probs / uniform).min()),
        "attn_onehot_frac": float((max_probs > 0.99).float().mean()),
        "hidden_absmax": max(float(h[mask].abs().max()) for h in out.hidden_states),
    }
    if getattr(out, "logits", None) is not None:
        p = out.logits[mask].softmax(-1)
        s["mlm_maxprob_mean"] = float(p.max(-1).values.mean())
    if getattr(out, "pooler_output", None) is not None:
        s["pooler_saturated_frac"] = float((out.pooler_output.abs() > 0.99).float().mean())
    return s


def eager(model):
    model.set_attn_implementation("eager")
    model.eval()
    return model


def load_strict(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True, attn_implementation="eager")
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{path}: transformers reports {bad}")
    return model.eval()


def to_json(obj, depth=0):
    """JSON with one line per list of scalars (rows of ids stay readable)."""
    pad = " " * (depth + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {to_json(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [pad + to_json(v, depth + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * depth + "]"
    return json.dumps(obj)


def write_json(path, obj):
    path.write_text(to_json(obj) + "\n")


def make_model(out_root, name):
    seed, cls, make_config, save_mode = MODELS[name]
    torch.manual_seed(seed)
    config = make_config()
    model = cls(config)
    randomize(model, seed)
    eager(model)

    out = out_root / "models" / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if save_mode == "sharded":
        model.save_pretrained(out, max_shard_size=SHARD_SIZE)
        shards = sorted(out.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 2 and (out / "model.safetensors.index.json").exists(), shards
    else:
        model.save_pretrained(out)
    if save_mode == "bin":
        # transformers 4.x save_pretrained(safe_serialization=False): torch.save of the state dict.
        (out / "model.safetensors").unlink()
        torch.save(model.state_dict(), out / "pytorch_model.bin")

    reloaded = load_strict(cls, out)
    kind = config.model_type if config.model_type in ("roberta", "distilbert") else "bert"
    n_layers = config.num_hidden_layers
    exp = out / "expected"
    exp.mkdir()
    stats = []
    for bi, (bname, (rows, seq, lengths)) in enumerate(BATCHES.items()):
        batch = make_inputs(config, kind, seed * 10 + bi, rows, seq, lengths)
        o = forward(model, batch, attentions=True)
        tensors = outputs_to_tensors(o, n_layers)
        again = outputs_to_tensors(forward(reloaded, batch), n_layers)
        for k in tensors:
            if not torch.equal(tensors[k], again[k]):
                raise SystemExit(f"{name}/{bname}: {k} differs after save + from_pretrained")
        st = statistics(o, batch)
        # Attention clearly not uniform on average, yet not everywhere one-hot.
        assert st["attn_max_mean"] > 2.0 * st["uniform_mean"], (name, st)
        assert st["attn_onehot_frac"] < 0.5, (name, st)
        stats.append(st)
        write_json(exp / f"{bname}.json", batch)
        save_file(tensors, exp / f"{bname}.safetensors")
    print(f"  {name:16s} {cls.__name__:22s} params={sum(p.numel() for p in model.parameters()):6d} "
          + " ".join(f"{k}={np.mean([s[k] for s in stats]):.3f}" for k in stats[0]))


# ----------------------------------------------------------------------------------------------
# Real models
# ----------------------------------------------------------------------------------------------

def ensure_assets():
    needed = [ASSETS / "all-MiniLM-L6-v2" / ".fetched", ASSETS / "antiberty" / ".fetched"]
    if not all(p.exists() for p in needed):
        subprocess.run(["bash", str(ROOT / "scripts" / "fetch_assets.sh")], check=True)


MINILM_SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
]


def make_minilm(out_root):
    src = ASSETS / "all-MiniLM-L6-v2"
    out = out_root / "minilm"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(MINILM_SENTENCES, padding=True)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    model, info = AutoModel.from_pretrained(src, output_loading_info=True, attn_implementation="eager")
    model.eval()
    load_info = {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in info.items()}
    if any(v for v in load_info.values()):
        print(f"  minilm: transformers load info: {load_info}")

    o = forward(model, inputs)
    tensors = outputs_to_tensors(o, model.config.num_hidden_layers)
    mask = torch.tensor(inputs["attention_mask"], dtype=torch.float32).unsqueeze(-1)
    pooled = (tensors["last_hidden_state"] * mask).sum(1) / mask.sum(1)
    tensors["mean_pooled"] = pooled.contiguous()
    tensors.pop("pooler_output", None)  # sentence-transformers does not use BERT's pooler

    def cos(i, j):
        return float(torch.nn.functional.cosine_similarity(pooled[i], pooled[j], dim=0))

    unpadded = [tok(s)["input_ids"] for s in MINILM_SENTENCES]
    for row, ids in zip(inputs["input_ids"], unpadded):
        assert row[: len(ids)] == ids
    expected = {
        "sentences": MINILM_SENTENCES,
        "token_ids": unpadded,
        "tokens": [tok.convert_ids_to_tokens(ids) for ids in unpadded],
        "pooling": "mean over tokens with attention_mask 1, of last_hidden_state",
        "cosine": {"0,1": cos(0, 1), "0,2": cos(0, 2), "1,2": cos(1, 2)},
        "load_info": load_info,
    }
    write_json(out / "inputs.json", inputs)
    write_json(out / "expected.json", expected)
    save_file(tensors, out / "expected.safetensors")
    print("  minilm token ids:")
    for s, ids, toks in zip(MINILM_SENTENCES, unpadded, expected["tokens"]):
        print(f"    {s!r}: {ids}  {toks}")
    print("  minilm mean-pooled cosines: "
          + ", ".join(f"cos({k})={v:.6f}" for k, v in expected["cosine"].items()))


HEAVY_CHAIN = ("EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTL"
               "YLQMNSLRAEDTAVYYCAK")
MASKED_RESIDUES = [4, 30, 55, 92]  # 0-based indices into HEAVY_CHAIN


def make_antiberty(out_root):
    src = ASSETS / "antiberty"
    out = out_root / "antiberty"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # As antiberty.AntiBERTyRunner does: a cased BertTokenizer on vocab.txt, the residues joined by
    # single spaces, "[MASK]" in place of a masked residue. (The package calls
    # BertTokenizer(vocab_file=..., do_lower_case=False); transformers 5 silently ignores vocab_file
    # there and maps every residue to [UNK], so the vocabulary is passed as a dict instead.)
    vocab = {}
    for line in (src / "vocab.txt").read_text(encoding="utf-8").splitlines():
        vocab[line] = len(vocab)
    tok = BertTokenizer(vocab=vocab, do_lower_case=False)
    residues = list(HEAVY_CHAIN)
    for i in MASKED_RESIDUES:
        residues[i] = "[MASK]"
    text = " ".join(residues)
    enc = tok(text)
    ids = enc["input_ids"]
    positions = [i + 1 for i in MASKED_RESIDUES]  # +1 for [CLS]
    by_hand = [vocab["[CLS]"]] + [vocab[r] for r in residues] + [vocab["[SEP]"]]
    assert ids == by_hand, (ids, by_hand)
    assert all(ids[p] == tok.mask_token_id for p in positions)

    model, info = BertForMaskedLM.from_pretrained(src, output_loading_info=True,
                                                  attn_implementation="eager")
    model.eval()
    load_info = {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in info.items()}
    print(f"  antiberty: transformers load info (BertForMaskedLM): {load_info}")

    batch = {"input_ids": [ids], "attention_mask": [enc["attention_mask"]]}
    o = forward(model, batch)
    probs = o.logits[0].softmax(-1)
    masks = []
    for res, p in zip(MASKED_RESIDUES, positions):
        top = probs[p].topk(5)
        masks.append({
            "position": p,
            "residue_index": res,
            "original": HEAVY_CHAIN[res],
            "top5_tokens": tok.convert_ids_to_tokens(top.indices.tolist()),
            "top5_ids": top.indices.tolist(),
            "top5_probs": [float(x) for x in top.values],
        })
    fill = {
        "sequence": HEAVY_CHAIN,
        "text": text,
        "input_ids": ids,
        "attention_mask": enc["attention_mask"],
        "masked_positions": positions,
        "masks": masks,
        "softmax": "over the whole vocabulary (25 tokens, special tokens included)",
        "load_info": load_info,
    }
    write_json(out / "fillmask.json", fill)
    save_file({"logits": o.logits.contiguous(), "last_hidden_state": o.hidden_states[-1].contiguous()},
              out / "expected.safetensors")
    for m in masks:
        print(f"    mask at {m['position']} (was {m['original']}): "
              + ", ".join(f"{t} {p:.4f}" for t, p in zip(m["top5_tokens"], m["top5_probs"])))


# ----------------------------------------------------------------------------------------------

def make_all(out_root):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    print(f"writing {out_root}")
    print("tiny models:")
    for name in MODELS:
        make_model(out_root, name)
    ensure_assets()
    make_minilm(out_root)
    make_antiberty(out_root)
    # students made by hand and the reference distillation loss, from the tiny models just written
    from make_loss_fixtures import make_distill
    make_distill(out_root)


def digest(root):
    sums = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            sums[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return sums


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures",
                    help="output folder (default tests/fixtures)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and compare sha256 with --out")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            make_all(Path(tmp))
            new, old = digest(Path(tmp)), digest(args.out)
        diff = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
        if diff:
            print("DIFFERENT:\n  " + "\n  ".join(diff))
            sys.exit(1)
        print(f"identical: {len(new)} files")
        return
    make_all(args.out)
    total = 0
    print("files:")
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.stat().st_size:9d}  {p.relative_to(args.out)}")
    print(f"total {total} bytes in {args.out}")


if __name__ == "__main__":
    main()
