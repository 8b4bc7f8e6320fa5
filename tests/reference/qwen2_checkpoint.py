"""Fixtures for tests/qwen2_loading.rs and tests/tokenizer.rs: tiny random Qwen2 checkpoints saved by transformers,
and a tiny byte-level BPE tokenizer with Qwen's special tokens and chat template.

Run with the project's venv (torch, transformers, tokenizers):
    /root/.cache/unireward/venv/bin/python tests/reference/qwen2_checkpoint.py [MODEL...]
Writes tests/fixtures/qwen2/<model>/ (config.json, safetensors, expected.json) and tests/fixtures/qwen2/tokenizer/.
"""

import json
import os
import shutil
import sys

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "qwen2")

# name: (config overrides, stored dtype, max_shard_size or None)
MODELS = {
    # Grouped-query attention (2 query heads per KV head), separate LM head.
    "gqa_untied": (dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                        vocab_size=128, tie_word_embeddings=False), torch.float32, None),
    # Plain multi-head attention, LM head tied to the embeddings (no lm_head.weight in the file).
    "mha_tied": (dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
                      vocab_size=96, tie_word_embeddings=True), torch.float32, None),
    # One KV head for all query heads, stored in bf16, tied.
    "mqa_tied_bf16": (dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, intermediate_size=48,
                           vocab_size=112, tie_word_embeddings=True), torch.bfloat16, None),
    # Sharded into several files by a tiny max_shard_size, stored in f16, untied.
    "sharded_f16": (dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         vocab_size=128, tie_word_embeddings=False), torch.float16, "8KB"),
    # The vocabulary of tests/fixtures/qwen2/tokenizer (363 ids, the chat tokens last) and its stop tokens as eos
    # (<|im_end|>, <|endoftext|>): a model the tokenizer can drive, for the `unireward generate` test.
    "chat_tied": (dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                       vocab_size=363, tie_word_embeddings=True, eos_token_id=[362, 360]), torch.float32, None),
}


def save_model(name, overrides, dtype, max_shard_size, seed):
    torch.manual_seed(seed)
    config = Qwen2Config(num_hidden_layers=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                         **{"eos_token_id": 2, **overrides})
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        # Random values everywhere (the default init leaves norms at one and biases at zero, which would hide a
        # loader that mixes them up).
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model = model.to(dtype)
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    if os.path.exists(os.path.join(out, "generation_config.json")):
        os.remove(os.path.join(out, "generation_config.json"))
    # What the Rust loader must read back: every tensor's exact values as float64 sums and leading values (all
    # three dtypes are exact in float64), in state_dict order (the order transformers saves and shards).
    expected = {"dtype": str(dtype).removeprefix("torch."), "max_shard_size": max_shard_size, "tensors": []}
    for tensor_name, t in model.state_dict().items():
        if config.tie_word_embeddings and tensor_name == "lm_head.weight":
            continue
        v = t.to(torch.float64).flatten()
        expected["tensors"].append({"name": tensor_name, "shape": list(t.shape), "sum": v.sum().item(),
                                    "abs_sum": v.abs().sum().item(), "head": v[:6].tolist()})
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


# Qwen2's pre-tokenizer split (from its tokenizer.json): contractions, letter runs with one leading non-letter,
# single digits, punctuation runs, newlines, whitespace.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")

# Qwen2-Instruct's chat template (the `chat_template` field of its tokenizer_config.json: data, copied verbatim).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TRAINING_TEXT = [
    "Which image better matches the prompt? Image 1 shows a red cat on a blue sofa.",
    "Image 2 is sharper, but the cat is green. Answer: Image 1 is better.",
    "Rate the video from 1 to 10. The motion is smooth and the colours are natural.",
    "You are a helpful assistant. Please judge the two answers and explain your reasoning.",
    "The quick brown fox jumps over the lazy dog; it's 12345 metres away, isn't it?",
]

ENCODE_CASES = [
    "Hello world",
    "Which image better matches the prompt?",
    "It's 2025: we'll rate 10 videos, they're 3.5s long and it'd take 42 minutes.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand \r\n windows endings",
    "Ünïcödé: café, naïve, 東京, Привет, 🙂👍🏽!",
    "<|im_start|>user\nIs image 1 better?<|im_end|>\n<|im_start|>assistant\n",
    "special tokens glued:<|im_end|><|endoftext|>text",
    "",
    "a",
    "!!!???...",
]

CHAT_CASES = [
    ([{"role": "user", "content": "Which image is better?"}], True),
    ([{"role": "system", "content": "You are a strict judge."}, {"role": "user", "content": "Rate this."}], True),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Compare image 1 and image 2.\nAnswer briefly."}], True),
    ([{"role": "user", "content": "No generation prompt."}], False),
    ([{"role": "system", "content": ""}, {"role": "user", "content": ""}], True),
    ([{"role": "user", "content": "Ünïcödé 🙂 and <|im_end|> inside"}], False),
]


def save_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    # As in Qwen2, the special tokens come after the learned vocabulary.
    tok.add_special_tokens(SPECIAL_TOKENS)

    out = os.path.join(OUT, "tokenizer")
    shutil.rmtree(out, ignore_errors=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = QWEN2_CHAT_TEMPLATE
    fast.save_pretrained(out)
    # Keep only what the tests read; chat_template.jinja holds the template string (transformers 5 writes it beside
    # tokenizer_config.json).
    for name in os.listdir(out):
        if name not in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            os.remove(os.path.join(out, name))

    cases = {"special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
             "vocab_size": tok.get_vocab_size(with_added_tokens=True), "encode": [], "chat": []}
    for text in ENCODE_CASES:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, text
        cases["encode"].append({"text": text, "ids": ids})
    for messages, add_generation_prompt in CHAT_CASES:
        text = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        ids = fast.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        cases["chat"].append({"messages": messages, "add_generation_prompt": add_generation_prompt, "text": text,
                              "ids": list(ids)})
    with open(os.path.join(out, "cases.json"), "w") as f:
        # One case per line: readable diffs when the fixture is regenerated.
        head = {k: v for k, v in cases.items() if k not in ("encode", "chat")}
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ",\n")
        for key in ("encode", "chat"):
            rows = ",\n".join("  " + json.dumps(case, ensure_ascii=False) for case in cases[key])
            f.write(f' "{key}": [\n{rows}\n]' + (",\n" if key == "encode" else "\n}\n"))


def main():
    """Writes every fixture, or with model names as arguments only those models (each keeps its seed)."""
    os.makedirs(OUT, exist_ok=True)
    only = sys.argv[1:]
    for seed, (name, (overrides, dtype, shard)) in enumerate(MODELS.items()):
        if not only or name in only:
            save_model(name, overrides, dtype, shard, seed)
    if not only:
        save_tokenizer()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
