"""A tiny chat tokenizer for the tiny LLaVA-OneVision fixture (`tests/fixtures/llava/hf`, vocabulary 96), so that
`unireward generate --image ...` and the bindings can run on it end to end.

Qwen2's real tokenizer has 151,665 tokens and the Qwen2 fixture's 363, both past the tiny model's 96 embedding rows,
so this one is a character-level BPE (no merges) over lower-case letters, digits, punctuation and the Metaspace
`▁`, with Qwen2's chat tokens and LLaVA-OneVision's `<image>` / `<video>` as special tokens at the ids the fixture's
config gives them (90, 91). Ids 0..89 are ordinary tokens; `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` take 92-94.
The ordinary ids past the characters are `<unusedN>` (N the id), added tokens so that text can name any id: the
CLI test writes the float64 reference's generation prompt as text and expects its tokens.

Run: python tests/reference/llava_tokenizer.py  (writes tests/fixtures/llava/hf/tokenizer.json)
"""
import json
import pathlib

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "llava" / "hf" / "tokenizer.json"
CONFIG = json.loads((OUT.parent / "config.json").read_text())
IMAGE, VIDEO = CONFIG["image_token_index"], CONFIG["video_token_index"]
VOCAB = CONFIG["text_config"]["vocab_size"]

CHARACTERS = ["<unk>", "\u2581"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,:;?!'\"()-/\n")
SPECIAL = {IMAGE: "<image>", VIDEO: "<video>", 92: "<|endoftext|>", 93: "<|im_start|>", 94: "<|im_end|>"}
assert max(SPECIAL) < VOCAB

tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(CHARACTERS)}, merges=[], unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
# Added tokens take the next ids in order: `<unusedN>` up to the placeholders, then the special tokens.
for i in range(len(CHARACTERS), max(SPECIAL) + 1):
    if i in SPECIAL:
        tokenizer.add_special_tokens([AddedToken(SPECIAL[i], special=True, normalized=False)])
    else:
        tokenizer.add_tokens([AddedToken(f"<unused{i}>", normalized=False)])
for i, token in SPECIAL.items():
    assert tokenizer.token_to_id(token) == i, (token, tokenizer.token_to_id(token))

tokenizer.save(str(OUT))
ids = tokenizer.encode("<|im_start|>user\n<image>\nis it red?<|im_end|>").ids
assert ids[0] == 93 and IMAGE in ids, ids
assert tokenizer.encode("<unused85><unused56>z").ids == [85, 56, 27]
print(f"wrote {OUT} ({tokenizer.get_vocab_size()} tokens): {ids}")
print(repr(tokenizer.decode(ids, skip_special_tokens=True)))
