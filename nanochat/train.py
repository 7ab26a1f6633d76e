"""nanochat: a small modern GPT trained for a fixed time budget. This is the agent's file.

Run: python nanochat/train.py (after `autoresearch-nb prepare`). The data, the clock and the
metric come from prepare.py, which is fixed; everything here is fair game for experiments. At the
end, finish() hands the model over with torch.export and a separate process evaluates it, so the
model must export: a plain tensor of logits from model(tokens), nothing kept between calls.
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare import (DEVICE, PROFILE, SEQ_LEN, TrainingClock, autocast_context, fail, finish,  # noqa: E402
                     load_tokenizer, make_train_loader)

# ---------------------------------------------------------------------------------------------
# Hyperparameters. The profile picks the starting size for this hardware.

DEPTH = PROFILE["depth"]             # transformer blocks
MODEL_DIM = PROFILE["n_embd"]        # width of the residual stream
HEAD_DIM = 64                        # attention head size (heads = MODEL_DIM // HEAD_DIM)
MLP_RATIO = 4                        # hidden width of the MLP, in multiples of MODEL_DIM
DEVICE_BATCH = PROFILE["device_batch"]  # rows per forward/backward pass
TOTAL_BATCH = PROFILE["total_batch"]    # tokens per optimizer step (gradient accumulation)
MATRIX_LR = 0.02                     # Muon, for the 2-D weights inside the blocks
EMBED_LR = 0.3                       # AdamW, token embedding
UNEMBED_LR = 0.004                   # AdamW, output head
MUON_MOMENTUM = 0.95
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.0
WARMUP_FRAC = 0.0                    # share of the budget spent ramping the learning rate up
WARMDOWN_FRAC = 0.4                  # share of the budget spent decaying it to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0
LOGIT_SOFTCAP = 15.0                 # logits = cap * tanh(logits / cap)
ROPE_BASE = 10000.0
COMPILE = DEVICE == "cuda"           # torch.compile where it pays off
PRINT_EVERY_SECONDS = 0.0 if DEVICE == "cpu" else 1.0
DIVERGENCE_FACTOR = 1.5              # give up when the loss rises this far above its start

# ---------------------------------------------------------------------------------------------
# The model: RoPE, RMSNorm (no learned scale), QK-norm, ReLU² MLP, untied head, logit soft-cap.


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base, device):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def apply_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.n_head = max(1, dim // head_dim)
        self.head_dim = dim // self.n_head
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos[:, :T], sin[:, :T])), norm(apply_rotary(k, cos[:, :T], sin[:, :T]))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim, ratio):
        super().__init__()
        self.c_fc = nn.Linear(dim, ratio * dim, bias=False)
        self.c_proj = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, head_dim, mlp_ratio):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, dim, head_dim, mlp_ratio, seq_len):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, head_dim, mlp_ratio) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        cos, sin = rotary_tables(seq_len, self.blocks[0].attn.head_dim, ROPE_BASE, "cpu")
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.zeros_(self.lm_head.weight)  # start from the uniform prediction
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                bound = math.sqrt(3.0 / linear.in_features)
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)

    def forward(self, idx, targets=None):
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# ---------------------------------------------------------------------------------------------
# Muon: momentum, then the update orthogonalized by a Newton-Schulz iteration.


def orthogonalize(g, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]))  # Nesterov
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                p.add_(update.type_as(p), alpha=-group["lr"] * scale)


def lr_multiplier(progress):
    """The schedule is a function of progress through the time budget, not of the step count."""
    if WARMUP_FRAC > 0 and progress < WARMUP_FRAC:
        return (progress + 1e-3) / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * (1 - progress) / WARMDOWN_FRAC
    return 1.0


# ---------------------------------------------------------------------------------------------
# Training.

torch.set_num_threads(max(1, os.cpu_count() or 1))
if DEVICE == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

vocab_size = load_tokenizer().vocab_size
model = GPT(vocab_size, DEPTH, MODEL_DIM, HEAD_DIM, MLP_RATIO, SEQ_LEN).to(DEVICE)
num_params = sum(p.numel() for p in model.parameters())
matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
optimizers = [
    Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM),
    torch.optim.AdamW([dict(params=[model.wte.weight], lr=EMBED_LR),
                       dict(params=[model.lm_head.weight], lr=UNEMBED_LR)],
                      betas=ADAM_BETAS, weight_decay=WEIGHT_DECAY, eps=1e-10),
]
for opt in optimizers:
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]

step_model = torch.compile(model) if COMPILE else model
scaler = torch.amp.GradScaler(DEVICE, enabled=PROFILE["dtype"] == "float16")
grad_accum = max(1, TOTAL_BATCH // (DEVICE_BATCH * SEQ_LEN))
tokens_per_step = grad_accum * DEVICE_BATCH * SEQ_LEN
loader = make_train_loader(DEVICE_BATCH)
attention_flops = 12 * DEPTH * MODEL_DIM * SEQ_LEN
flops_per_token = 6 * (num_params - model.wte.weight.numel()) + attention_flops
print(f"params {num_params / 1e6:.2f}M | depth {DEPTH} | dim {MODEL_DIM} | vocab {vocab_size} | "
      f"batch {tokens_per_step} tokens ({grad_accum} x {DEVICE_BATCH} x {SEQ_LEN}) | device {DEVICE}", flush=True)

x, y = next(loader)
if COMPILE:  # compile before the clock starts; this warm-up's gradients are thrown away
    with autocast_context():
        step_model(x, y).backward()
    model.zero_grad(set_to_none=True)

clock = TrainingClock()
clock.start()
step, tokens, first_loss, last_print, overflow_steps = 0, 0, None, -1.0, 0
while not clock.done:
    multiplier = lr_multiplier(clock.progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * multiplier
    for _ in range(grad_accum):
        with autocast_context():
            loss = step_model(x, y)
        scaler.scale(loss / grad_accum).backward()
        x, y = next(loader)
    for opt in optimizers:
        scaler.step(opt)
    scale = scaler.get_scale()
    scaler.update()
    overflow_steps += scaler.get_scale() < scale  # float16: the scaler skipped this step, its gradients overflowed
    model.zero_grad(set_to_none=True)
    step += 1
    tokens += tokens_per_step
    if clock.elapsed - last_print >= PRINT_EVERY_SECONDS or clock.done:
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            fail(f"nan loss at step {step}")
        first_loss = first_loss or loss_value
        if step > 10 and loss_value > DIVERGENCE_FACTOR * first_loss:
            fail(f"loss diverged at step {step}: {loss_value:.3f} against {first_loss:.3f} at the start")
        last_print = clock.elapsed
        print(f"step {step} | loss {loss_value:.4f} | lr {MATRIX_LR * multiplier:.4f} | "
              f"tok/s {tokens / max(clock.elapsed, 1e-9):.0f} | progress {clock.progress:.2f} | "
              f"elapsed {clock.elapsed:.1f}s", flush=True)

finish(model, clock, tokens, step, DEPTH, flops_per_token, overflow_steps=overflow_steps)
