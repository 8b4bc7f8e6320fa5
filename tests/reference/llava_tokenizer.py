"""A tiny chat tokenizer for the tiny LLaVA-OneVision fixture (`tests/fixtures/llava/hf`, vocabulary 96), so that
`unireward generate --image ...` and the bindings can run on it end to end.

Qwen2's real tokenizer has 151,665 tokens and the Qwen2 fixture's 363, both past the tiny model's 96 embedding rows,
so this one is a character-level BPE (no merges) over lower-case letters, digits, punctuation and the Metaspace
`▁`, with Qwen2's chat tokens and LLaVA-OneVision's `<image>` / `<video>` as special tokens at the ids the fixture's
config gives them (90, 91). Ids 0..89 are ordinary tokens; `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` take 92-94.

Run: python tests/reference/llava_tokenizer.py  (writes tests/fixtures/llava/hf/tokenizer.json)
"""
import json
import pathlib

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "llava" / "hf" / "tokenizer.json"
CONFIG = json.loads((OUT.parent / "config.json").read_text())
IMAGE, VIDEO = CONFIG["image_token_index"], CONFIG["video_token_index"]
VOCAB = CONFIG["text_config"]["vocab_size"]

ORDINARY = ["<unk>", "\u2581"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,:;?!'\"()-/\n")
ORDINARY += [f"<unused{i}>" for i in range(IMAGE - len(ORDINARY))]
assert len(ORDINARY) == IMAGE, len(ORDINARY)
SPECIAL = {IMAGE: "<image>", VIDEO: "<video>", 92: "<|endoftext|>", 93: "<|im_start|>", 94: "<|im_end|>"}
assert max(SPECIAL) < VOCAB

vocab = {token: i for i, token in enumerate(ORDINARY)}
tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
# Placeholder ids fill the gap between the ordinary and the special tokens so that ids are what the config says.
for i, token in sorted(SPECIAL.items()):
    assert tokenizer.get_vocab_size() <= i, (token, tokenizer.get_vocab_size())
    for gap in range(tokenizer.get_vocab_size(), i):
        tokenizer.add_tokens([AddedToken(f"<unused{gap}>", special=True)])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])
    assert tokenizer.token_to_id(token) == i, (token, tokenizer.token_to_id(token))

tokenizer.save(str(OUT))
ids = tokenizer.encode("<|im_start|>user\n<image>\nis it red?<|im_end|>").ids
assert ids[0] == 93 and IMAGE in ids, ids
print(f"wrote {OUT} ({tokenizer.get_vocab_size()} tokens): {ids}")
print(repr(tokenizer.decode(ids, skip_special_tokens=True)))
