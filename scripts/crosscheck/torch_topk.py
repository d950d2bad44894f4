"""Independent PyTorch cross-check of saelab's TopK result on `saelab synth` data.

Not part of the build or of CI (it needs PyTorch: `pip install torch numpy`). It trains
a TopK SAE with the recipe of Gao et al. 2024 (unit-norm decoder with parallel-gradient
removal, W_enc = W_decᵀ init, b_dec at the geometric median, AuxK over latents dead for
1M tokens, inputs scaled to E‖x‖² = d, Adam, linear LR decay over the last 20 %), or,
with `oracle`, only an encoder in front of the *true* dictionary used as a frozen decoder:
the best FVU any linear encoder + TopK can reach with a perfect dictionary.

    python scripts/crosscheck/torch_topk.py SYNTH_DIR {sae|oracle} K TOKENS LR

SYNTH_DIR is what `saelab synth --out SYNTH_DIR` wrote (train.npy, heldout.npy,
dictionary.npy). Prints held-out FVU, L0, recovered@0.9 and mmcs as saelab defines them.
"""
import sys
import time

import numpy as np
import torch

torch.manual_seed(0)
torch.set_num_threads(2)
synth, mode, k, tokens, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(float(sys.argv[4])), float(sys.argv[5])
X = torch.from_numpy(np.load(f"{synth}/train.npy").astype(np.float32))
H = torch.from_numpy(np.load(f"{synth}/heldout.npy").astype(np.float32))
D_true = torch.from_numpy(np.load(f"{synth}/dictionary.npy").astype(np.float32))
d, B, k_aux, c_aux = X.shape[1], 4096, 256, 1 / 32
scale = (d / (X[:100000] ** 2).sum(1).mean()).sqrt().item()
X = X * scale

if mode == "sae":
    n = 4096
    W_dec = torch.randn(n, d)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    sample, b_dec = X[:20000], X[:20000].mean(0)
    for _ in range(50):  # Weiszfeld iterations for the geometric median
        w = 1 / (sample - b_dec).norm(dim=1).clamp_min(1e-6)
        b_dec = (w[:, None] * sample).sum(0) / w.sum()
elif mode == "oracle":
    n, W_dec, b_dec = D_true.shape[0], D_true.clone(), torch.zeros(d)
else:
    sys.exit(f"unknown mode {mode}: use sae or oracle")
W_enc, b_enc = W_dec.t().clone(), torch.zeros(n)
params = [W_enc, b_enc] + ([W_dec, b_dec] if mode == "sae" else [])
for p in params:
    p.requires_grad_(True)
opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
steps = tokens // B
decay_from = int(0.8 * steps)
since_fired = torch.zeros(n)
perm = torch.randperm(X.shape[0])


def encode(x):
    pre = (x - b_dec) @ W_enc + b_enc
    v, i = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, i, v.relu()), pre


t0 = time.time()
for step in range(steps):
    lo = (step * B) % (X.shape[0] - B)
    x = X[perm[lo : lo + B]]
    z, pre = encode(x)
    e = x - (z @ W_dec + b_dec)
    loss = (e**2).sum(1).mean()
    dead = since_fired > 1_000_000
    if mode == "sae" and dead.any():
        v, i = pre.masked_fill(~dead[None, :], -float("inf")).topk(min(k_aux, int(dead.sum())), dim=1)
        z_aux = torch.zeros_like(pre).scatter(1, i, v.relu())
        loss = loss + c_aux * ((e.detach() - z_aux @ W_dec) ** 2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    if mode == "sae":
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
    for g in opt.param_groups:
        g["lr"] = lr * (1.0 if step < decay_from else (steps - step) / (steps - decay_from))
    opt.step()
    with torch.no_grad():
        if mode == "sae":
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        since_fired += B
        since_fired[(z > 0).any(0)] = 0
    if step % 250 == 0 or step == steps - 1:
        fvu = ((e**2).sum() / ((x - x.mean(0)) ** 2).sum()).item()
        print(f"step {step} loss {loss.item():.4f} batch FVU {fvu:.4f} {time.time() - t0:.0f}s", flush=True)

with torch.no_grad():
    h = H * scale
    z, _ = encode(h)
    fvu = ((h - (z @ W_dec + b_dec)) ** 2).sum() / ((h - h.mean(0)) ** 2).sum()
    cos = (D_true @ (W_dec / W_dec.norm(dim=1, keepdim=True)).t()).max(1).values
    print(
        f"{mode} k={k} tokens={steps * B} lr={lr}: held-out FVU {fvu:.4f}, "
        f"L0 {(z > 0).float().sum(1).mean():.2f}, recovered@0.9 {(cos > 0.9).float().mean():.3f}, "
        f"mmcs {cos.mean():.3f}"
    )
