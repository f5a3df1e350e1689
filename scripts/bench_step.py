"""bench_step.py: PyTorch side of the distillation-step benchmark (scripts/bench_step.sh runs it next to
distil's `cargo bench --bench distill_step`). Not part of CI.

One timed step is the reference step of DistilBERT's distiller.py (huggingface/transformers-research-
projects, distillation/, MLM mode), `Distiller.step` + `Distiller.optimize`, ported line for line:

  student forward (train mode, dropout 0.1, autograd), then teacher forward (eval mode, torch.no_grad),
  both with output_hidden_states and the same (input_ids, attention_mask), no token_type_ids
  loss_ce  = KLDivLoss("batchmean")(log_softmax(s_sel / T), softmax(t_sel / T)) * T**2, where s_sel, t_sel
             = masked_select(logits, attention_mask expanded over the vocabulary).view(-1, V)
  loss_mlm = CrossEntropyLoss(ignore_index=-100)(s_logits.view(-1, V), labels.view(-1))  (ALL B*S rows)
  loss_cos = CosineEmbeddingLoss("mean")(h_s_sel, h_t_sel, ones): last hidden states of non-padding tokens
  loss     = 5 * loss_ce + 2 * loss_mlm + 1 * loss_cos;  the .item() calls and the NaN check of the reference
  loss.backward(); clip_grad_norm_(student.parameters(), 5.0); AdamW.step(); zero_grad(); scheduler.step()
  AdamW: lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.0 in both groups, the group without decay
  being the parameters named *bias* or *LayerNorm.weight*; get_linear_schedule_with_warmup (5% warmup).

Models: transformers BertForMaskedLM from a config, random weights (nothing downloaded), float32.
  --size minilm: teacher 6 x 384, 12 heads, FFN 1536, vocabulary 30522, 512 positions; student 3 layers
  --size base:   teacher 12 x 768, 12 heads, FFN 3072 (BERT-base); student 6 layers [0,2,4,7,9,11]
The student is the teacher's config with fewer layers; its weights are the teacher's state dict with the
chosen layers renumbered (embeddings and the whole MLM head copied). The layers default to distil's
`spread_layers` (evenly spread, first and last kept, rounding half away from zero): 6 -> 3 gives [0, 3, 5],
12 -> 6 gives [0, 2, 4, 7, 9, 11]; --layers overrides.

Batch (fixed, seeded): B rows of S positions; row lengths uniform in [S - floor(0.22 S), S] (about 11%
padding); [CLS] ... [SEP] then [PAD] = 0; the ids in between uniform in [1000, V). Targets: round(15%) of the
real tokens, drawn without replacement among the real positions except each row's first and last; at a
target the label is the original id and the input becomes [MASK] (80%), a random id (10%) or stays (10%);
labels are -100 elsewhere. The same batch is used for every step (the reference re-masks per batch in
prepare_batch_mlm, outside `step`; that is not timed here).

Output: one JSON line. Modes that print something else and exit:
  --flops          the analytic FLOP count of one step (see step_flops), as JSON; no torch needed
  --ceiling [--n]  float32 matrix-product speed, n x n x n, numpy (its OpenBLAS) and torch (MKL), as JSON
  --report FILE    the Markdown tables of bench_step.sh from its JSON-lines results file

  .venv/bin/python scripts/bench_step.py --size minilm [--batch 16 --seq 128 --warmup 1 --steps 5]
  .venv/bin/python scripts/bench_step.py --size base --flops
"""

import argparse
import json
import math
import os
import re
import resource
import statistics
import sys
import time

SIZES = {
    # name: (teacher layers, hidden, heads, FFN, default batch, default seq)
    "minilm": (6, 384, 12, 1536, 16, 128),
    "base": (12, 768, 12, 3072, 8, 128),
}
VOCAB = 30522
MAX_POS = 512
CLS, SEP, MASK, PAD = 101, 102, 103, 0
T, ALPHA_CE, ALPHA_MLM, ALPHA_COS = 2.0, 5.0, 2.0, 1.0


def spread_layers(teacher_layers, count):
    """distil's spread_layers (src/distill/student.rs): f64 round() rounds half away from zero."""
    if count <= 1 or teacher_layers <= 1:
        return [0] * min(count, 1)
    last = teacher_layers - 1
    return [int(math.floor(i * last / (count - 1) + 0.5)) for i in range(count)]


def step_flops(layers_t, layers_s, hidden, ffn, vocab, batch, seq):
    """Matrix-product FLOPs of one step (2 per multiply-add), over all B*S positions, padding included
    (both implementations compute padded positions through the encoder and the MLM head).

    Per token, per encoder layer:  8 H^2 (Q, K, V, output projections) + 4 H F (FFN in and out)
                                   + 4 S H (Q K^T and attention x V, all heads together)
    Per token, MLM head:           2 H^2 (transform dense) + 2 H V (decoder = vocabulary projection)
    teacher forward  = N (L_t * layer + head)
    student forward  = N (L_s * layer + head)
    student backward = 2 x student forward (gradient w.r.t. the inputs and w.r.t. the weights of every
                       product; the first layer's input gradient is needed since the embeddings train)
    step             = teacher forward + 3 x student forward,  N = B * S.
    Not counted: softmax, LayerNorm, GELU, the losses, the embeddings, AdamW (all O(N H) or O(N V)).
    MiniLM pair at 16 x 128: 309.3 GFLOP, of which the 4 vocabulary projections (48.0 each) are 62%.
    """
    n = batch * seq
    layer = 8 * hidden * hidden + 4 * hidden * ffn + 4 * seq * hidden
    head = 2 * hidden * hidden + 2 * hidden * vocab
    teacher_fwd = n * (layers_t * layer + head)
    student_fwd = n * (layers_s * layer + head)
    return {
        "teacher_forward_gflop": teacher_fwd / 1e9,
        "student_forward_gflop": student_fwd / 1e9,
        "student_backward_gflop": 2 * student_fwd / 1e9,
        "vocab_projection_gflop": n * 2 * hidden * vocab / 1e9,
        "gflop": (teacher_fwd + 3 * student_fwd) / 1e9,
    }


def args_parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="minilm")
    p.add_argument("--batch", type=int, help="rows (default: 16 for minilm, 8 for base)")
    p.add_argument("--seq", type=int, help="positions per row (default 128)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--layers", help="teacher layers copied into the student, e.g. 0,2,5 (default: distil's spread)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flops", action="store_true", help="print the FLOP count of one step and exit")
    p.add_argument("--ceiling", action="store_true", help="measure the float32 matmul ceiling and exit")
    p.add_argument("--n", type=int, default=4096, help="matrix size for --ceiling")
    p.add_argument("--report", metavar="FILE", help="print bench_step.sh's tables from FILE and exit")
    a = p.parse_args()
    layers_t, hidden, heads, ffn, batch, seq = SIZES[a.size]
    a.batch = a.batch or batch
    a.seq = a.seq or seq
    a.teacher_layers, a.hidden, a.heads, a.ffn = layers_t, hidden, heads, ffn
    a.student_layers = (
        [int(x) for x in a.layers.split(",")] if a.layers else spread_layers(layers_t, max(1, layers_t // 2))
    )
    return a


def flops_of(a):
    return step_flops(a.teacher_layers, len(a.student_layers), a.hidden, a.ffn, VOCAB, a.batch, a.seq)


def rss_gib():
    """Resident memory now (VmRSS), GiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


# ---------------------------------------------------------------------------------------------- the step


def build_models(a, torch):
    from transformers import BertConfig, BertForMaskedLM

    def config(layers):
        return BertConfig(
            vocab_size=VOCAB,
            hidden_size=a.hidden,
            num_hidden_layers=layers,
            num_attention_heads=a.heads,
            intermediate_size=a.ffn,
            max_position_embeddings=MAX_POS,
            type_vocab_size=2,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            output_hidden_states=True,  # as train.py sets for both models
        )

    torch.manual_seed(a.seed)
    teacher = BertForMaskedLM(config(a.teacher_layers))
    student = BertForMaskedLM(config(len(a.student_layers)))
    if max(a.student_layers) >= a.teacher_layers:
        sys.exit(f"--layers {a.student_layers}: the teacher has {a.teacher_layers} layers")
    # State-dict surgery: embeddings and MLM head as they are, chosen layers renumbered 0..k-1.
    renumber = {t: s for s, t in enumerate(a.student_layers)}
    state = {}
    for key, value in teacher.state_dict().items():
        m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.*)", key)
        if m is None:
            state[key] = value
        elif int(m.group(1)) in renumber:
            state[f"bert.encoder.layer.{renumber[int(m.group(1))]}.{m.group(2)}"] = value
    student.load_state_dict(state, strict=True)
    return teacher, student


def make_batch(a, torch):
    g = torch.Generator().manual_seed(a.seed + 1)
    b, s = a.batch, a.seq
    short = int(0.22 * s)
    lengths = torch.randint(max(2, s - short), s + 1, (b,), generator=g)
    ids = torch.full((b, s), PAD, dtype=torch.long)
    for r, n in enumerate(lengths.tolist()):
        ids[r, :n] = torch.randint(1000, VOCAB, (n,), generator=g)
        ids[r, 0], ids[r, n - 1] = CLS, SEP
    attn_mask = torch.arange(s)[None, :] < lengths[:, None]  # bool, as prepare_batch_mlm makes it
    eligible = attn_mask.clone()
    eligible[:, 0] = False
    eligible[torch.arange(b), lengths - 1] = False
    candidates = eligible.flatten().nonzero().flatten()
    n_tgt = min(len(candidates), int(0.15 * int(lengths.sum()) + 0.5))
    tgt = candidates[torch.randperm(len(candidates), generator=g)[:n_tgt]]
    labels = torch.full((b * s,), -100, dtype=torch.long)
    labels[tgt] = ids.flatten()[tgt]
    how = torch.multinomial(torch.tensor([0.8, 0.1, 0.1]), n_tgt, replacement=True, generator=g)
    flat = ids.flatten().clone()
    flat[tgt[how == 0]] = MASK
    flat[tgt[how == 1]] = torch.randint(0, VOCAB, (int((how == 1).sum()),), generator=g)
    return flat.view(b, s), attn_mask, labels.view(b, s), int(lengths.sum())


class ReferenceStep:
    """distiller.py's Distiller.step + optimize in MLM mode, without logging, checkpoints and fp16."""

    def __init__(self, student, teacher, torch):
        from torch import nn
        from transformers import get_linear_schedule_with_warmup

        self.torch, self.nn = torch, nn
        self.student, self.teacher = student, teacher
        self.ce_loss_fct = nn.KLDivLoss(reduction="batchmean")
        self.lm_loss_fct = nn.CrossEntropyLoss(ignore_index=-100)
        self.cosine_loss_fct = nn.CosineEmbeddingLoss(reduction="mean")
        no_decay = ["bias", "LayerNorm.weight"]
        groups = [
            {
                "params": [p for n, p in student.named_parameters() if not any(nd in n for nd in no_decay) and p.requires_grad],
                "weight_decay": 0.0,
            },
            {
                "params": [p for n, p in student.named_parameters() if any(nd in n for nd in no_decay) and p.requires_grad],
                "weight_decay": 0.0,
            },
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=5e-4, eps=1e-6, betas=(0.9, 0.98))
        total = 100_000  # a long run: the learning rate is small but not 0 in the first steps
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, math.ceil(0.05 * total), total)
        self.last = {}

    def step(self, input_ids, attention_mask, lm_labels):
        torch, nn = self.torch, self.nn
        student_outputs = self.student(input_ids=input_ids, attention_mask=attention_mask)
        with torch.no_grad():
            teacher_outputs = self.teacher(input_ids=input_ids, attention_mask=attention_mask)
        s_logits, s_hidden_states = student_outputs["logits"], student_outputs["hidden_states"]
        t_logits, t_hidden_states = teacher_outputs["logits"], teacher_outputs["hidden_states"]
        assert s_logits.size() == t_logits.size()

        mask = attention_mask.unsqueeze(-1).expand_as(s_logits)
        s_logits_slct = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
        t_logits_slct = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
        loss_ce = (
            self.ce_loss_fct(
                nn.functional.log_softmax(s_logits_slct / T, dim=-1),
                nn.functional.softmax(t_logits_slct / T, dim=-1),
            )
            * T**2
        )
        loss = ALPHA_CE * loss_ce
        loss_mlm = self.lm_loss_fct(s_logits.view(-1, s_logits.size(-1)), lm_labels.view(-1))
        loss += ALPHA_MLM * loss_mlm

        s_h, t_h = s_hidden_states[-1], t_hidden_states[-1]
        mask = attention_mask.unsqueeze(-1).expand_as(s_h)
        dim = s_h.size(-1)
        s_h_slct = torch.masked_select(s_h, mask).view(-1, dim)
        t_h_slct = torch.masked_select(t_h, mask).view(-1, dim)
        target = s_h_slct.new(s_h_slct.size(0)).fill_(1)
        loss_cos = self.cosine_loss_fct(s_h_slct, t_h_slct, target)
        loss += ALPHA_COS * loss_cos

        self.last = {"loss": loss.item(), "ce": loss_ce.item(), "mlm": loss_mlm.item(), "cos": loss_cos.item()}
        self.optimize(loss)

    def optimize(self, loss):
        if (loss != loss).data.any():
            sys.exit("NaN detected")
        loss.backward()
        self.nn.utils.clip_grad_norm_(self.student.parameters(), 5.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()


def run_step_benchmark(a):
    import torch
    import transformers  # noqa: F401  (counted in the memory before the models, as in a user's script)

    rss_imports = rss_gib()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    teacher, student = build_models(a, torch)
    student.train()
    teacher.eval()
    input_ids, attn_mask, labels, real = make_batch(a, torch)
    ref = ReferenceStep(student, teacher, torch)
    times = []
    for i in range(a.warmup + a.steps):
        start = time.perf_counter()
        ref.step(input_ids, attn_mask, labels)
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
    med = statistics.median(times)
    f = flops_of(a)
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "size": a.size,
                "batch": a.batch,
                "seq": a.seq,
                "real_tokens": real,
                "step_s_median": round(med, 4),
                "step_s_min": round(min(times), 4),
                "step_s_max": round(max(times), 4),
                "tokens_per_s": round(real / med, 1),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                "rss_after_imports_gib": round(rss_imports, 3),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "malloc_env": "MALLOC_MMAP_MAX_" in os.environ,
                "gflop": round(f["gflop"], 2),
                "gflop_per_s": round(f["gflop"] / med, 1),
                "student_layers": a.student_layers,
                "attn_implementation": student.config._attn_implementation,
                "steps": a.steps,
                "last_losses": {k: round(v, 4) for k, v in ref.last.items()},
            }
        ),
        flush=True,
    )


# ------------------------------------------------------------------------------------------- the ceiling


def run_ceiling(n):
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count())
    flop = 2 * n**3
    out = {"n": n, "threads": os.cpu_count()}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    for name, mm in (("numpy", lambda: x @ y), ("torch", None)):
        if name == "torch":
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            mm = lambda: torch.mm(tx, ty)  # noqa: E731
        mm(), mm()
        best = min(_timed(mm) for _ in range(3))
        out[f"{name}_gflop_per_s"] = round(flop / best / 1e9, 1)
    out["ceiling_gflop_per_s"] = max(out["numpy_gflop_per_s"], out["torch_gflop_per_s"])
    print(json.dumps(out), flush=True)


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


# -------------------------------------------------------------------------------------------- the report

DISTIL_LINE = re.compile(
    r"distil step(?: on \S+ in \S+)?: teacher (?P<tl>\d+)x(?P<h>\d+) -> student (?P<sl>\d+) layers, batch (?P<b>\d+)x(?P<s>\d+) "
    r"\((?P<real>\d+) real tokens\): median (?P<med>[\d.]+) s \(min (?P<min>[\d.]+), max (?P<max>[\d.]+)\), "
    r"(?P<tps>[\d.]+) tokens/s, peak RSS (?P<rss>[\d.]+|NaN) GiB, (?P<threads>\d+) threads"
)


def parse_distil_line(text):
    """The one line that benches/distill_step.rs prints, as the fields of bench_step.py's JSON. A JSON
    line with "impl": "distil" (a future `--json` of the bench, with these same keys) is taken as it is."""
    for line in reversed(text.splitlines()):
        if line.startswith("{") and '"distil"' in line:
            rec = json.loads(line)
            if "student_layers" in rec and "student_layer_count" not in rec:
                rec["student_layer_count"] = len(rec["student_layers"])
            return rec
    m = None
    for line in text.splitlines():
        m = DISTIL_LINE.search(line) or m
    if m is None:
        return None
    phases = [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("per step:")]
    return {
        "impl": "distil",
        "phases": phases[-1] if phases else None,
        "teacher_layers": int(m["tl"]),
        "hidden": int(m["h"]),
        "student_layer_count": int(m["sl"]),
        "batch": int(m["b"]),
        "seq": int(m["s"]),
        "real_tokens": int(m["real"]),
        "step_s_median": float(m["med"]),
        "step_s_min": float(m["min"]),
        "step_s_max": float(m["max"]),
        "tokens_per_s": float(m["tps"]),
        "peak_rss_gib": float(m["rss"]),
        "threads": int(m["threads"]),
    }


def report(path):
    """Tables from bench_step.sh's results: one JSON object per line, {"kind": "ceiling", ...},
    {"kind": "flops", "size", ...} and {"kind": "run", "size", "variant", "round", "result" | "raw"}."""
    ceiling, flops, runs = None, {}, {}
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec["kind"] == "ceiling":
                ceiling = rec
            elif rec["kind"] == "flops":
                flops[rec["size"]] = rec
            else:
                res = rec.get("result") or parse_distil_line(rec.get("raw", ""))
                if res is None:
                    print(f"warning: could not read a {rec['variant']} result ({rec['size']}, round {rec['round']}): "
                          f"{rec.get('raw', '')[-300:]!r}", file=sys.stderr)
                    continue
                runs.setdefault(rec["size"], {}).setdefault(rec["variant"], []).append(res)
    for size, variants in runs.items():  # every run must have measured the shape the FLOPs are for
        f = flops.get(size)
        for variant, results in variants.items():
            for r in results if f else []:
                want = [("batch", f["batch"]), ("seq", f["seq"])]
                if "teacher_layers" in r:
                    want += [("teacher_layers", f["teacher_layers"]), ("hidden", f["hidden"]),
                             ("student_layer_count", len(f["student_layers"]))]
                bad = [f"{k} {r[k]} (expected {v})" for k, v in want if r[k] != v]
                if bad:
                    print(f"WARNING: a {variant} run of size {size} measured another shape: {', '.join(bad)}")
    if ceiling:
        print(
            f"float32 matrix-product ceiling ({ceiling['n']}^3, {ceiling['threads']} threads): "
            f"numpy {ceiling['numpy_gflop_per_s']:.0f} GFLOP/s, torch {ceiling['torch_gflop_per_s']:.0f} GFLOP/s"
        )
    peak = ceiling["ceiling_gflop_per_s"] if ceiling else None
    names = {"distil": "distil", "pytorch": "PyTorch (as users run it)", "pytorch-tuned": "PyTorch, MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64G"}
    for size, variants in runs.items():
        f = flops.get(size, {})
        gflop = f.get("gflop")
        first = next(iter(variants.values()))[0]
        print()
        print(
            f"### {size}: batch {first['batch']} x {first['seq']}, "
            + (f"{gflop:.1f} GFLOP per step (matrix products)" if gflop else "FLOPs unknown")
        )
        print()
        print("| impl | median step s | spread of run medians | all steps min–max | tokens/s | peak memory GiB | GFLOP/s | % of ceiling | distil time ÷ this | distil memory ÷ this |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        summary = {}
        for variant, results in variants.items():
            meds = [r["step_s_median"] for r in results]
            med = statistics.median(meds)
            summary[variant] = (med, max(r["peak_rss_gib"] for r in results))
        for variant, results in variants.items():
            med, mem = summary[variant]
            meds = sorted(r["step_s_median"] for r in results)
            tps = statistics.median(r["tokens_per_s"] for r in results)
            gps = gflop / med if gflop else float("nan")
            pct = f"{100 * gps / peak:.0f}%" if (peak and gflop) else "–"
            if "distil" in summary:
                dt, dm = summary["distil"][0] / med, summary["distil"][1] / mem
                ratio_t, ratio_m = f"{dt:.2f}", f"{dm:.2f}"
            else:
                ratio_t = ratio_m = "–"
            print(
                f"| {names.get(variant, variant)} | {med:.2f} | {meds[0]:.2f}–{meds[-1]:.2f} ({len(meds)} runs) | "
                f"{min(r['step_s_min'] for r in results):.2f}–{max(r['step_s_max'] for r in results):.2f} | "
                f"{tps:.0f} | {mem:.2f} | {gps:.0f} | {pct} | {ratio_t} | {ratio_m} |"
            )
        for r, res in enumerate(variants.get("distil", []), 1):
            if res.get("phases"):
                print(f"\ndistil per step, run {r} ({res['step_s_median']:.2f} s): {res['phases']}", end="")
        if any(res.get("phases") for res in variants.get("distil", [])):
            print()
        if "distil" in summary:
            parts = [
                f"{summary['distil'][0] / summary[v][0]:.2f} vs {names[v]}"
                for v in ("pytorch", "pytorch-tuned")
                if v in summary
            ]
            if parts:
                print()
                print(f"distil / PyTorch step time ({size}): " + "; ".join(parts) + " (below 1.0: distil is faster)")


def main():
    a = args_parse()
    if a.report:
        report(a.report)
    elif a.flops:
        shape = {"teacher_layers": a.teacher_layers, "hidden": a.hidden, "student_layers": a.student_layers}
        print(json.dumps({"size": a.size, "batch": a.batch, "seq": a.seq, **shape, **{k: round(v, 3) for k, v in flops_of(a).items()}}))
    elif a.ceiling:
        run_ceiling(a.n)
    else:
        run_step_benchmark(a)


if __name__ == "__main__":
    main()
