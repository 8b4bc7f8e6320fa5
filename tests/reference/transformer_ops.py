"""Float64 fixtures for the transformer ops: embedding, RMSNorm, RoPE, attention, linear, SwiGLU, LayerNorm, GELU,
bilinear interpolation.

Each op follows transformers' Qwen2 implementation, in float64: Qwen2RMSNorm's formula, rotate_half RoPE with the
angles formed in float32 as Qwen2RotaryEmbedding forms them (cos/sin then taken in float64), eager attention with
repeat_kv, a causal mask (or none: SigLIP's encoder) and a padding mask on keys (queries at padding positions output
zeros), nn.Linear, silu(gate) * up, F.layer_norm with a weight and a bias, F.gelu (tanh and exact), and
F.interpolate(mode="bilinear", align_corners=False) as LLaVA-OneVision calls it (its tensors saved channels-last,
[N, H, W, C], the op's layout). Gradients by autograd of sum(grad_out * out).

Run: python tests/reference/transformer_ops.py  (writes tests/fixtures/transformer_ops/*.json)
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "transformer_ops"
flat = lambda x: x.detach().reshape(-1).tolist()


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def save(name, **fields):
    (OUT / f"{name}.json").write_text(json.dumps({k: flat(v) if torch.is_tensor(v) else v for k, v in fields.items()}))


def embedding(name, v, h, ids, seed):
    g = torch.Generator().manual_seed(seed)
    table = randn(g, v, h)
    ids = torch.tensor(ids)
    out = F.embedding(ids, table)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * grad_out).sum().backward()
    save(name, v=v, h=h, ids_shape=list(ids.shape), table=table, ids=ids, grad_out=grad_out, out=out,
         grad_table=table.grad)


def rmsnorm(name, shape, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(g, *shape)
    w = (1.0 + 0.1 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).requires_grad_()
    # Qwen2RMSNorm.forward, without its cast to float32.
    y = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * grad_y).sum().backward()
    save(name, shape=list(shape), eps=eps, x=x, weight=w, grad_y=grad_y, y=y, grad_x=x.grad, grad_weight=w.grad)


def layernorm(name, shape, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(g, *shape)
    w = (1.0 + 0.1 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).requires_grad_()
    b = randn(g, shape[-1])
    y = F.layer_norm(x, (shape[-1],), w, b, eps)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * grad_y).sum().backward()
    save(name, shape=list(shape), eps=eps, x=x, weight=w, bias=b, grad_y=grad_y, y=y, grad_x=x.grad,
         grad_weight=w.grad, grad_bias=b.grad)


def gelu(name, approximate, seed):
    g = torch.Generator().manual_seed(seed)
    # Unit-size values, wide ones, and the tails.
    x = torch.cat([torch.randn(30, generator=g, dtype=torch.float64),
                   6.0 * torch.randn(30, generator=g, dtype=torch.float64),
                   torch.tensor([-40.0, -8.0, -1e-4, 0.0, 1e-4, 8.0, 40.0], dtype=torch.float64)])
    x = x.reshape(1, -1).requires_grad_()
    y = F.gelu(x, approximate=approximate)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * grad_y).sum().backward()
    save(name, shape=list(x.shape), x=x, grad_y=grad_y, y=y, grad_x=x.grad)


def bilinear(name, n, c, input_size, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(g, n, c, *input_size)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * grad_y).sum().backward()
    channels_last = lambda t: t.permute(0, 2, 3, 1)
    save(name, n=n, c=c, input_size=list(input_size), size=list(size), x=channels_last(x),
         grad_y=channels_last(grad_y), y=channels_last(y), grad_x=channels_last(x.grad))


def bilinear_nan(name, seed):
    """Where NaN goes in PyTorch's CPU kernel: an axis of unchanged size (H, 5 -> 5) keeps it in its row, a resized
    one (W, 9 -> 3: each output's second tap has weight 0) spreads it to every output that reads it, zero weight
    or not. JSON has no NaN: the NaN positions go as flat channels-last indices, NaN values as 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, 5, 9, generator=g, dtype=torch.float64)
    x[0, 0, 2, 2] = x[0, 1, 0, 4] = math.nan  # read with weight 0 (by output column 0), and with weight 1
    x.requires_grad_()
    y = F.interpolate(x, size=(5, 3), mode="bilinear", align_corners=False)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    grad_y[0, 0, 3, 1] = math.nan
    (y * grad_y).sum().backward()
    channels_last = lambda t: t.detach().permute(0, 2, 3, 1).reshape(-1)
    nan_at = lambda t: torch.nonzero(channels_last(t).isnan()).reshape(-1)
    zeroed = lambda t: channels_last(t).nan_to_num(0.0)
    save(name, n=1, c=2, input_size=[5, 9], size=[5, 3], x=zeroed(x), x_nan=nan_at(x), grad_y=zeroed(grad_y),
         grad_y_nan=nan_at(grad_y), y=zeroed(y), y_nan=nan_at(y), grad_x=zeroed(x.grad), grad_x_nan=nan_at(x.grad))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope(name, n, t, heads, d, theta, positions, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(g, n, t, heads, d)
    positions = torch.tensor(positions)
    # Qwen2RotaryEmbedding: inv_freq and the angles in float32.
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1).double()
    cos, sin = emb.cos()[:, :, None, :], emb.sin()[:, :, None, :]
    out = x * cos + rotate_half(x) * sin
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * grad_out).sum().backward()
    save(name, n=n, t=t, heads=heads, d=d, theta=theta, x=x, positions=positions, grad_out=grad_out, out=out,
         grad_x=x.grad)


def attention(name, n, t, hq, hkv, d, mask, seed, causal=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = randn(g, n, t, hq, d), randn(g, n, t, hkv, d), randn(g, n, t, hkv, d)
    mask = torch.tensor(mask)
    rep = hq // hkv
    # transformers' eager attention: [N, heads, T, d], repeat_kv, additive causal + padding mask.
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kh, vh = kh.repeat_interleave(rep, dim=1), vh.repeat_interleave(rep, dim=1)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    visible = torch.ones(t, t, dtype=torch.bool)
    if causal:
        visible = visible.tril()
    allowed = visible[None, None] & (mask[:, None, None, :] != 0)
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float64).min)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    query_real = (mask != 0)[:, None, :, None].to(torch.float64)
    out = ((probs @ vh) * query_real).transpose(1, 2)
    lse = lse * query_real[..., 0]
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * grad_out).sum().backward()
    save(name, n=n, t=t, hq=hq, hkv=hkv, d=d, causal=causal, q=q, k=k, v=v, mask=mask, grad_out=grad_out, out=out,
         lse=lse, grad_q=q.grad, grad_k=k.grad, grad_v=v.grad)


def linear(name, shape, m, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(g, *shape)
    w = randn(g, m, shape[-1])
    b = randn(g, m) if bias else None
    y = F.linear(x, w, b)
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * grad_y).sum().backward()
    save(name, shape=list(shape), m=m, has_bias=bias, x=x, weight=w, bias=b if bias else [], grad_y=grad_y, y=y,
         grad_x=x.grad, grad_weight=w.grad, grad_bias=b.grad if bias else [])


def swiglu(name, shape, seed):
    g = torch.Generator().manual_seed(seed)
    gate, up = randn(g, *shape), randn(g, *shape)
    y = F.silu(gate) * up
    grad_y = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (y * grad_y).sum().backward()
    save(name, shape=list(shape), gate=gate, up=up, grad_y=grad_y, y=y, grad_gate=gate.grad, grad_up=up.grad)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    embedding("embedding", v=13, h=6, ids=[[3, 0, 12, 3, 5], [5, 5, 7, 1, 3]], seed=1)
    rmsnorm("rmsnorm", shape=(2, 3, 10), eps=1e-6, seed=2)
    rope("rope", n=2, t=4, heads=3, d=8, theta=10000.0, positions=[[0, 1, 2, 3], [0, 1, 2, 0]], seed=3)
    rope("rope_far", n=1, t=3, heads=2, d=16, theta=1000000.0, positions=[[1000, 30000, 131071]], seed=4)
    attention("attention_gqa", n=2, t=5, hq=6, hkv=2, d=8, mask=[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], seed=5)
    attention("attention_padded", n=2, t=3, hq=2, hkv=2, d=5, mask=[[0, 0, 0], [1, 0, 0]], seed=6)
    attention("attention_bidirectional", n=1, t=6, hq=4, hkv=4, d=9, mask=[[1] * 6], seed=10, causal=False)
    attention("attention_bidirectional_padded", n=2, t=5, hq=6, hkv=2, d=8, mask=[[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]],
              seed=11, causal=False)
    linear("linear_bias", shape=(2, 3, 5), m=7, bias=True, seed=7)
    linear("linear_nobias", shape=(4, 9), m=3, bias=False, seed=8)
    swiglu("swiglu", shape=(2, 3, 7), seed=9)
    layernorm("layernorm", shape=(2, 3, 11), eps=1e-6, seed=12)
    gelu("gelu_tanh", approximate="tanh", seed=13)
    gelu("gelu_exact", approximate="none", seed=14)
    # Video pooling (ceil(13 / 2)), a down-sampling by uneven ratios, up-sampling with one input row (and to one
    # output column).
    bilinear("bilinear_pool", n=1, c=2, input_size=(13, 13), size=(7, 7), seed=15)
    bilinear("bilinear_down", n=2, c=3, input_size=(7, 9), size=(3, 4), seed=16)
    bilinear("bilinear_up", n=2, c=2, input_size=(1, 4), size=(5, 1), seed=17)
    bilinear_nan("bilinear_nan", seed=18)
