"""Expected token ids and labels for tests/train_data.rs: the conversation and pair files of tests/fixtures/train
tokenized by transformers (`PreTrainedTokenizerFast` + `apply_chat_template`) as LLaVA-NeXT's training does.

`preprocess_qwen` below is LLaVA-NeXT's (llava/train/train.py, the Qwen branch UnifiedReward trains with), kept
line for line except:
- the newline it always labels is the tokenizer's id of "\\n" (LLaVA-NeXT writes Qwen2's id, 198, which is another
  token in this tiny vocabulary);
- `<image>` keeps its token id (LLaVA-NeXT swaps in IMAGE_TOKEN_INDEX = -200; unireward's model looks for the
  placeholder's own id), and a video record's `<image>` becomes `<video>` (the token the model fills with video
  features);
- a leading `system` turn is the system message (LLaVA-NeXT drops any leading non-human turn).
`labels_assistant` is the same with the always-labelled tokens left out (unireward's `LabelMask::AssistantTurns`).
Pairs: the prompt with the generation prompt, and each completion as the rest of the templated conversation.

Also writes tests/fixtures/train/tokenizer/: the tiny Qwen2 tokenizer of tests/fixtures/qwen2/tokenizer with
`<image>` and `<video>` added as special tokens (as LLaVA-OneVision checkpoints have them).

Run: ~/.cache/unireward/torch-venv/bin/python tests/reference/train_data.py
"""

import copy
import json
import os
import shutil

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
SOURCE = os.path.join(FIXTURES, "qwen2", "tokenizer")
OUT = os.path.join(FIXTURES, "train")
IGNORE_INDEX = -100


def save_tokenizer():
    out = os.path.join(OUT, "tokenizer")
    os.makedirs(out, exist_ok=True)
    tok = Tokenizer.from_file(os.path.join(SOURCE, "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False),
                            AddedToken("<video>", special=True, normalized=False)])
    tok.save(os.path.join(out, "tokenizer.json"))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(SOURCE, name), os.path.join(out, name))
    fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, "tokenizer.json"), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = open(os.path.join(SOURCE, "chat_template.jinja")).read()
    return fast


def preprocess_qwen(sources, tokenizer, has_image=False, max_len=2048, system_message="You are a helpful assistant.",
                    always_label=True):
    roles = {"human": "user", "gpt": "assistant"}
    tokenizer = copy.deepcopy(tokenizer)
    if has_image:
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    im_start, im_end = tokenizer.additional_special_tokens_ids
    nl_tokens = tokenizer("\n").input_ids
    assert len(nl_tokens) == 1
    unmask_tokens_idx = [nl_tokens[0], im_start, im_end] if always_label else []
    chat_template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    tokenizer.chat_template = chat_template
    input_ids, targets = [], []
    for i, source in enumerate(sources):
        if source[0]["from"] == "system":  # unireward: a leading system turn is the system message
            system_message = source[0]["value"]
            source = source[1:]
        if roles.get(source[0]["from"], source[0]["from"]) != roles["human"]:
            source = source[1:]
        input_id, target = [], []
        input_id += tokenizer.apply_chat_template([{"role": "system", "content": system_message}])
        target += [IGNORE_INDEX] * len(input_id)
        for conv in source:
            role = roles.get(conv["from"], conv["from"])
            content = conv["value"]
            conv = [{"role": role, "content": content}]
            encode_id = tokenizer.apply_chat_template(conv)
            input_id += encode_id
            if role in ["user", "system"]:
                target += [IGNORE_INDEX] * len(encode_id)
            else:
                target += encode_id
        assert len(input_id) == len(target), f"{len(input_id)} != {len(target)}"
        for idx, encode_id in enumerate(input_id):
            if encode_id in unmask_tokens_idx:
                target[idx] = encode_id
        input_ids.append(input_id)
        targets.append(target)
    return input_ids, targets


def turns(record):
    out = []
    for t in record["conversations"]:
        out.append({"from": t.get("from", t.get("role")), "value": t.get("value", t.get("content"))})
        if out[-1]["from"] == "user":
            out[-1]["from"] = "human"
        if out[-1]["from"] == "assistant":
            out[-1]["from"] = "gpt"
    if "video" in record and "image" not in record:
        for t in out:
            t["value"] = t["value"].replace("<image>", "<video>")
    return out


def main():
    tok = save_tokenizer()
    conversations = []
    for line, text in enumerate(open(os.path.join(OUT, "sft.jsonl")), start=1):
        if not text.strip():
            continue
        record = json.loads(text)
        [ids], [labels] = preprocess_qwen([turns(record)], tok)
        [ids2], [assistant] = preprocess_qwen([turns(record)], tok, always_label=False)
        assert ids == ids2
        conversations.append({"line": line, "ids": ids, "labels_llava_next": labels, "labels_assistant": assistant})
    pairs = []
    for line, text in enumerate(open(os.path.join(OUT, "pairs.jsonl")), start=1):
        record = json.loads(text)
        prompt = record["prompt"]
        if "video" in record and "image" not in record:
            prompt = prompt.replace("<image>", "<video>")
        messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]
        prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        entry = {"line": line, "prompt": tok(prompt_text).input_ids}
        for key in ("chosen", "rejected"):
            full = tok.apply_chat_template(messages + [{"role": "assistant", "content": record[key]}], tokenize=False)
            assert full.startswith(prompt_text)
            entry[key] = tok(full[len(prompt_text):]).input_ids
        pairs.append(entry)
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<image>", "<video>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"special_tokens": special, "conversations": conversations, "pairs": pairs}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
