"""make_loss_fixtures.py: the oracle for distil's students and distillation loss. Writes tests/fixtures/distill/.

It reads the tiny teachers that make_fixtures.py wrote (tests/fixtures/models/<teacher>/, with their
expected/batch0.json and batch1.json) and, with torch + transformers only (no distil code), writes:

  distill/students.json                  teacher -> {"layers", "student_dir", "teacher_dir", "mask_id"}
                                          (directories relative to distill/)
  distill/<teacher>_student/             the student made BY HAND from the teacher: the teacher's config with
      config.json, model.safetensors      fewer layers; state-dict surgery copies the embeddings, the chosen
                                          teacher layers renumbered 0..k-1 and the whole MLM head (transform,
                                          LayerNorm, decoder, bias); nothing is left random or perturbed.
                                          Written by save_pretrained (float32).
      expected/batch0.json                the teacher's batch0 input, unchanged (the unmasked ids)
      expected/batch0.safetensors         the student's outputs on it, float32, as make_fixtures.py writes
                                          them: last_hidden_state, hidden_states.0 .. hidden_states.<k>
                                          (0 = embedding output), logits
  distill/<teacher>/batch0.json, batch1.json
                                          the teacher's batchK inputs with MLM targets: input_ids (targets
                                          replaced by MASK_ID), attention_mask, labels (original id at a
                                          target, -100 elsewhere), token_type_ids (only where the teacher's
                                          batch has them: the BERT teachers)
  distill/<teacher>/batch0_single.json    batch0 with exactly ONE target (edge case of restrict_ce_to_mask)
  distill/<teacher>/losses.json           a list of records, one per (batch, case, token types), see LOSS_KEYS
  distill/<teacher>/<batch>.<case>[.no_token_types].grads.safetensors
                                          d total / d parameter of the student, float32 (computed in float64),
                                          keyed by the names in the student's model.safetensors; for (batch,
                                          case) in GRADS, and GRADS_NO_TYPES with ".no_token_types"

Teacher layers kept (STUDENT_LAYERS): bert_tied [1], bert_untied [0, 2], roberta [0], distilbert [0, 2].

Targets (masking): in each batch, the candidates are the real (attention_mask 1) positions of every row
except the row's first and last real position; max(2, floor(0.15 * real tokens + 0.5)) of them are drawn
without replacement by numpy's PCG64 (seed MASK_SEED + 10 * teacher seed + batch index). At a target the
label is the original id and the input becomes MASK_ID = 4 (an ordinary in-vocabulary id in every fixture:
never a pad id (0 for BERT/DistilBERT, 1 for RoBERTa), nor <s>=0 / </s>=2 of RoBERTa). No 80/10/10 split:
every target is replaced. An original id may itself be 4; its label is then 4.

The loss is distiller.py's (huggingface/transformers-research-projects, distillation/, MLM mode), written
out here with the same torch modules and the same order of terms, in float64 (both models .double()):
  teacher: eval, torch.no_grad; student: eval (no dropout), with autograd; both get the same inputs
  sel      = attention_mask (default) or labels > -1 (restrict_ce_to_mask), expanded over the vocabulary
  s, t     = masked_select(logits, sel).view(-1, V)                       (n rows, V)
  ce       = KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T**2   (mean over the n rows)
  mlm      = CrossEntropyLoss(ignore_index=-100)(s_logits.view(-1, V), labels.view(-1))
  mse      = MSELoss(reduction="sum")(s, t) / n
  cos      = CosineEmbeddingLoss(reduction="mean")(h_s, h_t, ones): last hidden states, attention_mask rows
  total    = a_ce*ce + a_mlm*mlm (+ a_mse*mse if a_mse > 0) (+ a_cos*cos if a_cos > 0), in that order
Every component is recorded unweighted, also when its alpha is 0.

Token types: distiller.py passes none (input_ids and attention_mask only). A record with "token_type_ids":
true fed the batch file's token_type_ids to both models; false fed none (transformers then uses type 0
everywhere). The BERT teachers get both kinds of record; RoBERTa and DistilBERT batches have no
token_type_ids, so only false.

Tied tensors: a tied decoder weight is the word-embedding matrix, so its gradient (the sum of both uses) is
stored once, under the embeddings' name, as model.safetensors stores it. bert_untied (tie_word_embeddings
false): transformers 5 unties cls.predictions.decoder.bias from cls.predictions.bias as well, and its forward
uses only decoder.bias; cls.predictions.bias gets no gradient in torch. The two are kept equal (as in every
real checkpoint, and as transformers 4 had them: one tensor), so both names carry the gradient of the one
logical output bias.

How to run (from the repository root; make_fixtures.py also calls this at its end):

  .venv/bin/python scripts/make_loss_fixtures.py          # rewrites tests/fixtures/distill/
  .venv/bin/python scripts/make_loss_fixtures.py --check  # regenerates elsewhere, compares sha256

Deterministic: one CPU thread, deterministic algorithms, seeded masks, old outputs deleted first.
"""

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

ROOT = mf.ROOT

STUDENT_LAYERS = {
    "bert_tied": [1],
    "bert_untied": [0, 2],
    "roberta": [0],
    "distilbert": [0, 2],
}
MASK_ID = 4
MASK_FRACTION = 0.15
MIN_TARGETS = 2
MASK_SEED = 40000
SINGLE = "batch0_single"  # batch0 with exactly one target

# name -> (temperature, alpha_ce, alpha_mlm, alpha_cos, alpha_mse, restrict_ce_to_mask)
CASES = {
    "t2": (2.0, 5.0, 2.0, 1.0, 0.0, False),
    "t2_restrict": (2.0, 5.0, 2.0, 1.0, 0.0, True),
    "t35_mse": (3.5, 0.5, 1.5, 2.0, 0.25, False),
}
# (batch, case) whose gradients are stored, with the inputs as in the batch file (the size budget keeps the
# rest scalar-only); GRADS_NO_TYPES: the same for the BERT batches fed without their token_type_ids
GRADS = {("batch0", "t2"), ("batch0", "t2_restrict"), ("batch1", "t2"), ("batch1", "t2_restrict"),
         (SINGLE, "t2_restrict")}
GRADS_NO_TYPES = {("batch0", "t2")}
LOSS_KEYS = ["batch", "case", "token_type_ids", "temperature", "alpha_ce", "alpha_mlm", "alpha_cos",
             "alpha_mse", "restrict_ce_to_mask", "n_ce_rows", "n_targets", "n_tokens",
             "ce", "mlm", "cos", "mse", "total", "grads"]

# A parameter that transformers 5 keeps but never uses in forward -> the parameter that does its job.
UNUSED_TWIN = {"cls.predictions.bias": "cls.predictions.decoder.bias"}


def family(config):
    return config.model_type if config.model_type in ("roberta", "distilbert") else "bert"


def model_class(name):
    return mf.MODELS[name][1]


# ----------------------------------------------------------------------------------------------
# Students by hand
# ----------------------------------------------------------------------------------------------

LAYER_KEY = re.compile(r"^(bert\.encoder\.layer|roberta\.encoder\.layer|distilbert\.transformer\.layer)"
                       r"\.(\d+)\.(.+)$")


def student_state_dict(teacher_sd, layers):
    """Keeps every non-layer tensor, keeps the chosen layers renumbered 0..k-1, drops the other layers."""
    new = {}
    for key, value in teacher_sd.items():
        m = LAYER_KEY.match(key)
        if m is None:
            new[key] = value.clone()
        elif int(m.group(2)) in layers:
            new[f"{m.group(1)}.{layers.index(int(m.group(2)))}.{m.group(3)}"] = value.clone()
    return new


def make_student(out_dir, teachers_root, name):
    layers = STUDENT_LAYERS[name]
    cls = model_class(name)
    teacher = mf.load_strict(cls, teachers_root / name)
    config = teacher.config.to_dict()
    n_teacher = teacher.config.num_hidden_layers
    assert all(0 <= i < n_teacher for i in layers) and layers == sorted(set(layers)), (name, layers)
    if family(teacher.config) == "distilbert":
        config["n_layers"] = len(layers)
    else:
        config["num_hidden_layers"] = len(layers)
    config = type(teacher.config).from_dict(config)
    assert config.num_hidden_layers == len(layers)

    torch.manual_seed(0)
    student = cls(config)
    mf.eager(student)
    sd = student_state_dict(teacher.state_dict(), layers)
    result = student.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    with torch.no_grad():  # every tensor is the teacher's, exactly (tied ones included)
        for k, v in student.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)

    out = out_dir / f"{name}_student"
    out.mkdir(parents=True)
    student.save_pretrained(out)
    reloaded = mf.load_strict(cls, out)

    tbatch = json.loads((teachers_root / name / "expected" / "batch0.json").read_text())
    tensors = mf.outputs_to_tensors(mf.forward(student, tbatch), len(layers))
    again = mf.outputs_to_tensors(mf.forward(reloaded, tbatch), len(layers))
    for k in tensors:
        if not torch.equal(tensors[k], again[k]):
            raise SystemExit(f"{name}_student: {k} differs after save + from_pretrained")
    # The embedding output is the teacher's; so is the first layer's if teacher layer 0 was kept.
    texp = load_file(teachers_root / name / "expected" / "batch0.safetensors")
    same = ["hidden_states.0"] + (["hidden_states.1"] if layers[0] == 0 else [])
    for k in same:
        if not torch.equal(tensors[k], texp[k]):
            diff = float((tensors[k] - texp[k]).abs().max())
            raise SystemExit(f"{name}_student: {k} is not the teacher's (max diff {diff})")
    if layers[-1] == n_teacher - 1 and len(layers) == n_teacher:
        assert torch.equal(tensors["logits"], texp["logits"])
    exp = out / "expected"
    exp.mkdir()
    mf.write_json(exp / "batch0.json", tbatch)
    save_file(tensors, exp / "batch0.safetensors")
    n_params = sum(p.numel() for p in student.parameters())
    print(f"  {name + '_student':20s} layers={layers} params={n_params} "
          f"(teacher {sum(p.numel() for p in teacher.parameters())})")
    return {"layers": layers, "student_dir": f"{name}_student", "teacher_dir": f"../models/{name}",
            "mask_id": MASK_ID}


# ----------------------------------------------------------------------------------------------
# Batches with targets
# ----------------------------------------------------------------------------------------------

def mask_batch(batch, seed, n_targets=None):
    ids = np.array(batch["input_ids"], dtype=np.int64)
    att = np.array(batch["attention_mask"], dtype=np.int64)
    lengths = att.sum(1)
    for r, n in enumerate(lengths):  # right padding
        assert att[r, :n].all() and not att[r, n:].any(), batch
    candidates = [(r, c) for r, n in enumerate(lengths) for c in range(1, int(n) - 1)]
    n_real = int(lengths.sum())
    if n_targets is None:
        n_targets = max(MIN_TARGETS, int(np.floor(MASK_FRACTION * n_real + 0.5)))
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(candidates), size=n_targets, replace=False).tolist())
    labels = np.full_like(ids, -100)
    masked = ids.copy()
    for i in pick:
        r, c = candidates[i]
        labels[r, c] = ids[r, c]
        masked[r, c] = MASK_ID
    out = {"input_ids": masked.tolist(), "attention_mask": att.tolist(), "labels": labels.tolist()}
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"]
    return out


# ----------------------------------------------------------------------------------------------
# The reference loss (distiller.py, MLM mode)
# ----------------------------------------------------------------------------------------------

def distiller_loss(s_out, t_out, attention_mask, lm_labels, case):
    temperature, alpha_ce, alpha_mlm, alpha_cos, alpha_mse, restrict = case
    ce_loss_fct = torch.nn.KLDivLoss(reduction="batchmean")
    lm_loss_fct = torch.nn.CrossEntropyLoss(ignore_index=-100)
    mse_loss_fct = torch.nn.MSELoss(reduction="sum")
    cosine_loss_fct = torch.nn.CosineEmbeddingLoss(reduction="mean")

    s_logits, s_hidden_states = s_out.logits, s_out.hidden_states
    t_logits, t_hidden_states = t_out.logits, t_out.hidden_states
    assert s_logits.size() == t_logits.size()
    attention_mask = attention_mask.bool()
    if restrict:
        mask = (lm_labels > -1).unsqueeze(-1).expand_as(s_logits)
    else:
        mask = attention_mask.unsqueeze(-1).expand_as(s_logits)
    s_logits_slct = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
    t_logits_slct = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
    assert t_logits_slct.size() == s_logits_slct.size()

    loss_ce = ce_loss_fct(
        torch.nn.functional.log_softmax(s_logits_slct / temperature, dim=-1),
        torch.nn.functional.softmax(t_logits_slct / temperature, dim=-1),
    ) * temperature ** 2
    loss = alpha_ce * loss_ce

    loss_mlm = lm_loss_fct(s_logits.view(-1, s_logits.size(-1)), lm_labels.view(-1))
    if alpha_mlm > 0.0:
        loss = loss + alpha_mlm * loss_mlm

    loss_mse = mse_loss_fct(s_logits_slct, t_logits_slct) / s_logits_slct.size(0)
    if alpha_mse > 0.0:
        loss = loss + alpha_mse * loss_mse

    s_hid = s_hidden_states[-1]
    t_hid = t_hidden_states[-1]
    hmask = attention_mask.unsqueeze(-1).expand_as(s_hid)
    dim = s_hid.size(-1)
    s_hid_slct = torch.masked_select(s_hid, hmask).view(-1, dim)
    t_hid_slct = torch.masked_select(t_hid, hmask).view(-1, dim)
    target = s_hid_slct.new(s_hid_slct.size(0)).fill_(1)
    loss_cos = cosine_loss_fct(s_hid_slct, t_hid_slct, target)
    if alpha_cos > 0.0:
        loss = loss + alpha_cos * loss_cos

    parts = {"ce": loss_ce, "mlm": loss_mlm, "cos": loss_cos, "mse": loss_mse}
    return loss, parts, int(s_logits_slct.size(0))


def by_hand(s_out, t_out, attention_mask, labels, case):
    """The same quantities from their definitions, as an independent check of the module calls."""
    temperature, _, _, _, _, restrict = case
    rows = (labels > -1) if restrict else attention_mask.bool()
    s, t = s_out.logits[rows], t_out.logits[rows]
    ls, lt = (s / temperature).log_softmax(-1), (t / temperature).log_softmax(-1)
    ce = (lt.exp() * (lt - ls)).sum(-1).mean() * temperature ** 2
    tgt = labels > -1
    mlm = -s_out.logits[tgt].log_softmax(-1).gather(-1, labels[tgt].unsqueeze(-1)).mean()
    mse = ((s - t) ** 2).sum(-1).mean()
    real = attention_mask.bool()
    hs, ht = s_out.hidden_states[-1][real], t_out.hidden_states[-1][real]
    cos = (1 - (hs * ht).sum(-1) / (hs.norm(dim=-1) * ht.norm(dim=-1))).mean()
    return {"ce": ce, "mlm": mlm, "cos": cos, "mse": mse}


def run_models(teacher, student, batch, use_types):
    kw = {"input_ids": torch.tensor(batch["input_ids"]),
          "attention_mask": torch.tensor(batch["attention_mask"])}
    if use_types:
        kw["token_type_ids"] = torch.tensor(batch["token_type_ids"])
    with torch.no_grad():
        t_out = teacher(**kw, output_hidden_states=True, return_dict=True)
    s_out = student(**kw, output_hidden_states=True, return_dict=True)
    return s_out, t_out, kw["attention_mask"], torch.tensor(batch["labels"])


def gradients(student, file_keys):
    params = student.state_dict(keep_vars=True)
    grads = {}
    for key in file_keys:
        p = params[key]
        assert isinstance(p, torch.nn.Parameter), key
        g = p.grad
        if g is None and key in UNUSED_TWIN:
            twin = params[UNUSED_TWIN[key]]
            assert torch.equal(p, twin), key
            g = twin.grad
        if g is None:
            raise SystemExit(f"no gradient for {key}")
        grads[key] = g.detach().to(torch.float32).contiguous().clone()
    # every trainable tensor is in the file once (tied ones under one name)
    ptrs = {p.data_ptr() for p in student.parameters()}
    saved = {params[k].data_ptr() for k in file_keys}
    assert ptrs == saved, "model.safetensors does not cover every parameter"
    return grads


def make_losses(out_dir, teachers_root, name, seed):
    cls = model_class(name)
    teacher = mf.load_strict(cls, teachers_root / name).double()
    student = mf.load_strict(cls, out_dir / f"{name}_student").double()
    student.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with safe_open(out_dir / f"{name}_student" / "model.safetensors", "pt") as f:
        file_keys = sorted(f.keys())

    out = out_dir / name
    out.mkdir(parents=True)
    batches = {}
    for bi, bname in enumerate(["batch0", "batch1"]):
        tb = json.loads((teachers_root / name / "expected" / f"{bname}.json").read_text())
        batches[bname] = mask_batch(tb, MASK_SEED + 10 * seed + bi)
        if bname == "batch0":
            batches[SINGLE] = mask_batch(tb, MASK_SEED + 10 * seed + 9, n_targets=1)
    records = []
    for bname, batch in batches.items():
        mf.write_json(out / f"{bname}.json", batch)
        n_targets = sum(v > -1 for row in batch["labels"] for v in row)
        assert n_targets == 1 if bname == SINGLE else n_targets >= MIN_TARGETS
        type_modes = [True, False] if "token_type_ids" in batch else [False]
        cases = ["t2_restrict"] if bname == SINGLE else list(CASES)
        for use_types in type_modes:
            for cname in cases:
                case = CASES[cname]
                student.zero_grad(set_to_none=True)
                s_out, t_out, att, labels = run_models(teacher, student, batch, use_types)
                total, parts, n_rows = distiller_loss(s_out, t_out, att, labels, case)
                check = by_hand(s_out, t_out, att, labels, case)
                for k, v in parts.items():
                    assert torch.allclose(v, check[k], rtol=1e-12, atol=1e-14), (name, bname, cname, k)
                    assert torch.isfinite(v), (name, bname, cname, k)
                grads_file = None
                as_file = use_types == ("token_type_ids" in batch)
                if (bname, cname) in (GRADS if as_file else GRADS_NO_TYPES):
                    total.backward()
                    suffix = "" if as_file else ".no_token_types"
                    grads_file = f"{bname}.{cname}{suffix}.grads.safetensors"
                    save_file(gradients(student, file_keys), out / grads_file)
                t, a_ce, a_mlm, a_cos, a_mse, restrict = case
                rec = {
                    "batch": bname, "case": cname, "token_type_ids": use_types, "temperature": t,
                    "alpha_ce": a_ce, "alpha_mlm": a_mlm, "alpha_cos": a_cos, "alpha_mse": a_mse,
                    "restrict_ce_to_mask": restrict, "n_ce_rows": n_rows, "n_targets": int(n_targets),
                    "n_tokens": int(att.sum()),
                    **{k: float(v.detach()) for k, v in parts.items()},
                    "total": float(total.detach()), "grads": grads_file,
                }
                assert list(rec) == LOSS_KEYS
                records.append(rec)
    (out / "losses.json").write_text(
        "[\n" + ",\n".join(" " + json.dumps(r) for r in records) + "\n]\n")
    print(f"  {name:12s} {len(records)} records, {sum(r['grads'] is not None for r in records)} with grads")


# ----------------------------------------------------------------------------------------------

def make_distill(out_root, teachers_root=None):
    """Writes out_root/distill from the teachers in teachers_root (default out_root/models)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    teachers_root = Path(teachers_root or out_root / "models")
    out = Path(out_root) / "distill"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"students and reference losses -> {out}")
    students = {}
    for name in STUDENT_LAYERS:
        students[name] = make_student(out, teachers_root, name)
    mf.write_json(out / "students.json", students)
    for name in STUDENT_LAYERS:
        make_losses(out, teachers_root, name, mf.MODELS[name][0])
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total < 4_000_000, f"distill fixtures are {total} bytes"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures",
                    help="fixtures folder: teachers read from OUT/models, written to OUT/distill")
    ap.add_argument("--check", action="store_true",
                    help="regenerate OUT/distill in a temporary folder and compare sha256")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            make_distill(Path(tmp), teachers_root=args.out / "models")
            new, old = mf.digest(Path(tmp) / "distill"), mf.digest(args.out / "distill")
        diff = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
        if diff:
            print("DIFFERENT:\n  " + "\n  ".join(diff))
            sys.exit(1)
        print(f"identical: {len(new)} files")
        return
    make_distill(args.out)
    total = 0
    print("files:")
    root = args.out / "distill"
    for p in sorted(root.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.stat().st_size:9d}  {p.relative_to(root)}")
    print(f"total {total} bytes in {root}")


if __name__ == "__main__":
    main()
