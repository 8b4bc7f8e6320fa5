"""Float64 reference for the Qwen2 model: logits, causal-LM loss, every parameter's gradient, the gradient of the
input embeddings, and greedy generation, for each tiny checkpoint that tests/reference/qwen2_checkpoint.py saved.

Each model is loaded with Qwen2ForCausalLM.from_pretrained(dir, attn_implementation="eager") and converted to
float64 (exact from the stored f32/bf16/f16). Stock transformers computes parts of a float64 model in float32:
Qwen2RMSNorm (casts to float32), eager attention (softmax with dtype=float32), the RoPE cos/sin (from float32 angles)
and ForCausalLMLoss (logits.float()). For a true float64 reference this script swaps in float64 versions of the
first three, with the same formulas (the RoPE angles stay float32, as Qwen2RotaryEmbedding forms them, and their
cos/sin are taken in float64, as in tests/reference/transformer_ops.py), computes the loss itself in float64, and
asserts that stock transformers agrees to float32 accuracy.

Run with the project's venv:
    /root/.cache/unireward/venv/bin/python tests/reference/qwen2_model.py
Writes tests/fixtures/qwen2/<model>/reference.safetensors (rerunning writes identical bytes):
- input_ids int64 [3, 7] (random ids everywhere, also under padding), attention_mask int64 [3, 7] (right padding,
  lengths 7, 4, 1). Position ids are the default arange(7) for every row (checked against an explicit run).
- logits float64 [3, 7, V]; at padding positions they are what transformers computes there (the query attends to
  the row's real tokens): compare only where attention_mask is 1.
- loss float64 []: labels = input_ids where the mask is 1, else -100; shifted (token t predicts t + 1); mean over
  the counted next tokens (6 + 3 + 0 = 9: the length-1 row counts none).
- grad.<name> float64 for every entry of model.named_parameters(): the gradient of loss. Tied models have no
  lm_head.weight there (named_parameters yields the shared tensor once, as model.embed_tokens.weight), so
  grad.model.embed_tokens.weight holds the embedding's and the head's shares summed.
- grad.inputs_embeds float64 [3, 7, H]: the same loss, run from inputs_embeds = embed_tokens(input_ids).
- generate.<i>.prompt int64 [L] (L = 5, 1, 9) and generate.<i>.tokens int64 [12]: greedy, batch 1, no padding, no
  stop token; equal in float32 and float64 and with a top-1/top-2 logit gap of at least MIN_GAP at every step (a
  prompt's seed is advanced until it is).
- generate.stop.eos int64 [1] (the 4th greedy token of prompt 0) and generate.stop.tokens int64: the new tokens that
  generate returns for prompt 0 with that eos, the eos included.
"""

import hashlib
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Qwen2ForCausalLM
from transformers.models.qwen2 import modeling_qwen2

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "qwen2")
MODELS = ["gqa_untied", "mha_tied", "mqa_tied_bf16", "sharded_f16"]
LENGTHS = [7, 4, 1]
PROMPT_LENGTHS = [5, 1, 9]
NEW_TOKENS = 12
# Smallest top-1/top-2 logit gap along a greedy run: keeps the tokens stable under f32 (and bf16) rounding.
MIN_GAP = 1e-2

STOCK = (modeling_qwen2.Qwen2RMSNorm.forward, modeling_qwen2.eager_attention_forward,
         modeling_qwen2.Qwen2RotaryEmbedding.forward)


def rms_norm(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key = modeling_qwen2.repeat_kv(key, module.num_key_value_groups)
    value = modeling_qwen2.repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def rotary(self, x, position_ids):
    assert self.rope_type == "default" and self.attention_scaling == 1.0
    freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1).double()
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def use_float64_ops(on):
    """Swaps transformers' float32-internal RMSNorm, attention softmax and RoPE cos/sin for float64 ones (or back)."""
    norm, attention, rope = (rms_norm, eager_attention, rotary) if on else STOCK
    modeling_qwen2.Qwen2RMSNorm.forward = norm
    modeling_qwen2.eager_attention_forward = attention
    modeling_qwen2.Qwen2RotaryEmbedding.forward = rope


def load(name, dtype):
    model = Qwen2ForCausalLM.from_pretrained(os.path.join(FIXTURES, name), attn_implementation="eager")
    model = model.to(dtype).eval()
    # No stop token unless one is passed (the checkpoints' config says eos_token_id=2).
    model.generation_config.eos_token_id = None
    return model


def causal_lm_loss(logits, labels):
    """ForCausalLMLoss without its cast to float32: token t predicts label t + 1; mean over labels != -100."""
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100)


def greedy_by_hand(model, prompt):
    """Greedy decoding with a full forward per step (no cache); returns the tokens and the smallest top-2 gap."""
    ids, gap = prompt[None], float("inf")
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            top = model(input_ids=ids).logits[0, -1].topk(2)
            gap = min(gap, (top.values[0] - top.values[1]).item())
            ids = torch.cat([ids, top.indices[:1].view(1, 1)], dim=1)
    return ids[0, len(prompt):], gap


def generate(model, prompt, eos=None):
    ids = prompt[None]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, eos_token_id=eos)
    return out[0, len(prompt):]


def reference(name, seed):
    use_float64_ops(True)
    model = load(name, torch.float64)
    config = model.config
    vocab, hidden = config.vocab_size, config.hidden_size
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert "lm_head.weight" not in dict(model.named_parameters())

    g = torch.Generator().manual_seed(1000 + seed)
    input_ids = torch.randint(0, vocab, (len(LENGTHS), max(LENGTHS)), generator=g)
    attention_mask = (torch.arange(max(LENGTHS))[None] < torch.tensor(LENGTHS)[:, None]).long()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    out = {"input_ids": input_ids, "attention_mask": attention_mask}

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    loss = causal_lm_loss(logits, labels)
    loss.backward()
    out["logits"] = logits.detach()
    out["loss"] = loss.detach()
    for param_name, param in model.named_parameters():
        out[f"grad.{param_name}"] = param.grad
    model.zero_grad()

    embeds = model.model.embed_tokens(input_ids).detach().requires_grad_()
    loss_e = causal_lm_loss(model(inputs_embeds=embeds, attention_mask=attention_mask).logits, labels)
    loss_e.backward()
    assert torch.equal(loss_e, loss)
    out["grad.inputs_embeds"] = embeds.grad
    assert out["grad.inputs_embeds"].shape == (len(LENGTHS), max(LENGTHS), hidden)

    with torch.no_grad():
        # Right padding leaves the default position ids at arange(T) for every row.
        positions = torch.arange(max(LENGTHS)).expand(len(LENGTHS), -1)
        explicit = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
        assert torch.equal(explicit, out["logits"])
        # transformers' own loss (float32 inside) and stock float32-internal ops agree to float32 accuracy.
        hf_loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        assert abs(hf_loss.item() - loss.item()) <= 1e-5 * abs(loss.item()), (hf_loss, loss)
        use_float64_ops(False)
        stock = model(input_ids=input_ids, attention_mask=attention_mask).logits
        use_float64_ops(True)
        real = attention_mask.bool()
        stock_err = ((stock - out["logits"])[real].abs().max() / out["logits"][real].abs().max()).item()
        assert stock_err < 1e-5, stock_err

    model32 = load(name, torch.float32)
    gaps, prompt_seeds = [], []
    for i, length in enumerate(PROMPT_LENGTHS):
        for attempt in range(100):
            prompt_seed = 2000 + 100 * seed + 10 * i + attempt
            prompt = torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(prompt_seed))
            tokens = generate(model, prompt)
            by_hand, gap = greedy_by_hand(model, prompt)
            assert torch.equal(tokens, by_hand), (tokens, by_hand)
            if torch.equal(generate(model32, prompt), tokens) and gap >= MIN_GAP:
                break
        else:
            raise AssertionError(f"{name}: no stable greedy run for prompt {i}")
        assert tokens.shape == (NEW_TOKENS,)
        out[f"generate.{i}.prompt"], out[f"generate.{i}.tokens"] = prompt, tokens
        gaps.append(gap)
        prompt_seeds.append(prompt_seed)

    eos = out["generate.0.tokens"][3].item()
    stop = generate(model, out["generate.0.prompt"], eos=eos)
    first = out["generate.0.tokens"].tolist().index(eos)
    assert torch.equal(stop, out["generate.0.tokens"][:first + 1]), stop
    out["generate.stop.eos"], out["generate.stop.tokens"] = torch.tensor([eos]), stop

    out = {k: v.detach().contiguous() for k, v in out.items()}
    path = os.path.join(FIXTURES, name, "reference.safetensors")
    save_file(out, path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    print(f"{name}: {os.path.getsize(path)} bytes sha256 {digest}, loss {loss.item():.12g}, "
          f"max|logit| {out['logits'].abs().max().item():.6g}, stock-vs-float64 {stock_err:.2e}, "
          f"prompt seeds {prompt_seeds}, min greedy gaps {[round(x, 4) for x in gaps]}, stop {stop.tolist()}",
          file=sys.stderr)
    for i in range(len(PROMPT_LENGTHS)):
        print(f"  generate.{i}: prompt {out[f'generate.{i}.prompt'].tolist()} -> "
              f"{out[f'generate.{i}.tokens'].tolist()}", file=sys.stderr)


def main():
    torch.set_num_threads(1)
    for seed, name in enumerate(MODELS):
        reference(name, seed)


if __name__ == "__main__":
    main()
