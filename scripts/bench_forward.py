"""PyTorch side of the forward benchmark: all-MiniLM-L6-v2 with transformers, batch B x S random
word-piece ids, torch.no_grad, eval mode, torch threads = cores. Prints the median over repeats.

Run with the fixture environment: .venv/bin/python scripts/bench_forward.py [--batch 32 --seq 128]
"""
import argparse
import os
import statistics
import time

import torch
from transformers import AutoModel

p = argparse.ArgumentParser()
p.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "assets", "all-MiniLM-L6-v2"))
p.add_argument("--batch", type=int, default=32)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--repeats", type=int, default=10)
a = p.parse_args()

torch.set_num_threads(os.cpu_count())
model = AutoModel.from_pretrained(a.model).eval()
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, model.config.vocab_size, (a.batch, a.seq), generator=g)
ids[:, 0], ids[:, -1] = 101, 102
mask = torch.ones_like(ids)
with torch.no_grad():
    model(input_ids=ids, attention_mask=mask)
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()
        times.append(time.perf_counter() - t)
times.sort()
med = statistics.median(times)
print(
    f"pytorch forward all-MiniLM-L6-v2 batch {a.batch} x {a.seq}: median {med*1e3:.1f} ms "
    f"(min {times[0]*1e3:.1f}, max {times[-1]*1e3:.1f}) = {a.batch*a.seq/med:.0f} tokens/s, "
    f"{torch.get_num_threads()} threads, torch {torch.__version__}, attention {model.config._attn_implementation}"
)
