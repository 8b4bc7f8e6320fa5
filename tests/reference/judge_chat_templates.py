"""Jinja chat templates rendered by transformers' `render_jinja_template` (what `apply_chat_template` runs):
tests/fixtures/judge/chat_templates.json, for checking that the Rust Jinja path (minijinja, configured as
transformers configures Jinja2) renders them identically.

The templates exercise what checkpoints' templates use: `{%-`/`-%}` whitespace control, trim/lstrip blocks, `set`,
`namespace`, `loop.first`/`loop.last`/`loop.index0`, Python string methods, filters (`length`, `tojson`, `trim`),
`is defined`, and `raise_exception` in a branch taken on bad input. The second is Qwen2.5-Instruct's template without
its tool-calling branches (written from its published form, not copied). Needs only transformers (torch venv).

Run: ~/.cache/unireward/torch-venv/bin/python tests/reference/judge_chat_templates.py
"""

import json
import os

from transformers.utils.chat_template_utils import render_jinja_template

HERE = os.path.dirname(__file__)
QWEN2 = open(os.path.join(HERE, "..", "fixtures", "qwen2", "tokenizer", "chat_template.jinja")).read()

QWEN25_NO_TOOLS = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

FEATURES = """{% set ns = namespace(users=0, last='') %}
{% for m in messages %}
  {% if m.role not in ['system', 'user', 'assistant'] %}
    {{ raise_exception('unknown role ' + m.role) }}
  {% endif %}
  {% if m.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}
  {% set ns.last = m.role %}
<{{ loop.index0 }}:{{ m.role | upper }}{% if loop.last %}!{% endif %}>
  {% if m.content.startswith('<image>') %}[{{ m.content | length }} chars, image first]{% endif %}
{{ m.content.strip() }}|{{ m.content | tojson }}|{{ m.content | trim }}
{% endfor %}
users={{ ns.users }} last={{ ns.last }}{% if extra is defined %} extra{% endif %}
{% set call = {'name': 'rate', 'arguments': {'score': 7, 'weight': 0.25, 'tags': ['a<b', "it's", '猫'], 'ok': true, 'none': none, 'empty': {}}} %}
{{ call | tojson }}
{{ call | tojson(indent=2) }}
{{ call.arguments | tojson(sort_keys=true) }}
{% if add_generation_prompt %}<gen>{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "<image>\n <image>\nWhich image is better?"}],
    [{"role": "system", "content": "Judge carefully."}, {"role": "user", "content": "  Rate {this} \"one\"  "}],
    [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Image 1 is better than Image 2."},
     {"role": "user", "content": "Why? 两只猫\n\tend"}],
]


def main():
    out = []
    for name, template in (("qwen2", QWEN2), ("qwen2.5_no_tools", QWEN25_NO_TOOLS), ("features", FEATURES)):
        cases = []
        for messages in CONVERSATIONS:
            for add_generation_prompt in (True, False):
                rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                                    add_generation_prompt=add_generation_prompt)
                cases.append({"messages": messages, "add_generation_prompt": add_generation_prompt,
                              "text": rendered[0]})
        out.append({"name": name, "template": template, "cases": cases})
    path = os.path.join(HERE, "..", "fixtures", "judge", "chat_templates.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
