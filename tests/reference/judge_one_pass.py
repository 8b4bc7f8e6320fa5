"""Float64 reference for one-pass verdicts (src/judge/verdict.rs): each class continuation's summed token
log-probability under teacher forcing, computed by running every whole sequence (prompt, answer prefix, continuation)
alone through transformers, then the softmax over the classes and, with class values, the expected score.

Models: the tiny Qwen2 checkpoint tests/fixtures/qwen2/gqa_untied (text only) and the tiny LLaVA-OneVision
tests/fixtures/llava/hf with the anyres image of its reference (the prompt `generate.input_ids`, its placeholders
expanded, and the image's tiles from reference.safetensors), both in float64 with the float64 patches of
qwen2_model.py / llava_onevision_model.py.

Run with the torch venv (Pillow is not needed: the LLaVA helpers are imported with a stand-in for it):
    ~/.cache/unireward/torch-venv/bin/python tests/reference/judge_one_pass.py
Writes tests/fixtures/judge/one_pass.json: per model, cases of
- prompts: K token-id lists (they share a start; their tails differ),
- answers: each class's whole answer (their common leading tokens are the fixed answer prefix),
- values: the classes' score values or null,
- log_probs [K][C], probs [K][C], expected [K] or null.
Case "shared": K = 3 prompts, answers with a 2-token common prefix, values 1..3. Case "single": K = 1, answers with
no common prefix (the first scored token read right after the prompt), one of them a single token.
"""

import json
import os
import sys
import types

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
from transformers import (LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,  # noqa: F401
                          LlavaOnevisionProcessor)

sys.path.insert(0, HERE)
# Only the helpers that make images need Pillow; transformers has looked for it already (and found none).
sys.modules.setdefault("PIL", types.SimpleNamespace(Image=None))
import llava_onevision_model as llava  # noqa: E402
import qwen2_model  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "fixtures")
OUT = os.path.join(FIXTURES, "judge", "one_pass.json")


def cases(base, vocab, seed):
    """The two cases' prompts and answers, random ids in [1, vocab) (base: the shared start of every prompt)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    prompts = [base + ids(2), base + ids(3), base]
    prefix = ids(2)
    firsts = torch.randperm(vocab - 1, generator=g)[:3].add(1).tolist()
    answers = [prefix + [firsts[0]], prefix + [firsts[1]] + ids(2), prefix + [firsts[2]] + ids(1)]
    single_firsts = torch.randperm(vocab - 1, generator=g)[:3].add(1).tolist()
    single = [[single_firsts[0]] + ids(2), [single_firsts[1]], [single_firsts[2]] + ids(1)]
    return [
        {"name": "shared", "prompts": prompts, "answers": answers, "values": [1.0, 2.0, 3.0]},
        {"name": "single", "prompts": [base + ids(4)], "answers": single, "values": None},
    ]


def summed_log_prob(run, prompt, answer):
    """Σ log p(answer[j] | prompt, answer[:j]) with the whole sequence run once."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = run(ids)[0]
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt)
    return sum(logp[start + j - 1, t].item() for j, t in enumerate(answer))


def reference(run, case):
    # The answers' common prefix is part of every answer, so its log-probability is a shared term: the classes'
    # scores are the continuations after it (what the library reports).
    answers = case["answers"]
    shared = 0
    while all(len(a) > shared and a[shared] == answers[0][shared] for a in answers):
        shared += 1
    rows = []
    for prompt in case["prompts"]:
        context = prompt + answers[0][:shared]
        rows.append([summed_log_prob(run, context, a[shared:]) for a in answers])
    log_probs = torch.tensor(rows, dtype=torch.float64)
    probs = torch.softmax(log_probs, dim=-1)
    out = dict(case, log_probs=log_probs.tolist(), probs=probs.tolist(), expected=None)
    if case["values"] is not None:
        out["expected"] = (probs * torch.tensor(case["values"], dtype=torch.float64)).sum(-1).tolist()
    return out


def qwen2_cases():
    qwen2_model.use_float64_ops(True)
    model = qwen2_model.load("gqa_untied", torch.float64)

    def run(ids):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

    vocab = model.config.vocab_size
    base = torch.randint(1, vocab, (9,), generator=torch.Generator().manual_seed(11)).tolist()
    return [reference(run, c) for c in cases(base, vocab, 12)]


def llava_cases():
    llava.float64_ops(True)
    model = llava.features_before_post_layernorm(LlavaOnevisionForConditionalGeneration.from_pretrained(
        os.path.join(FIXTURES, "llava", "hf"), attn_implementation="eager").eval()).to(torch.float64)
    ref = load_file(os.path.join(FIXTURES, "llava", "reference.safetensors"))
    tiles = int(ref["image_tiles"][0])
    pixel_values = ref["pixel_values"][:tiles].double()[None]
    image_sizes = ref["image_sizes"][:1]

    def run(ids):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
                     image_sizes=image_sizes).logits

    base = ref["generate.input_ids"].tolist()
    return [reference(run, c) for c in cases(base, llava.IMAGE_ID, 13)]


def main():
    torch.set_num_threads(1)
    out = {"qwen2_gqa_untied": qwen2_cases(), "llava_hf_anyres": llava_cases()}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {os.path.getsize(OUT)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
