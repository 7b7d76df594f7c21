#!/usr/bin/env python3
"""Golden data for tests/unit/test_chat_template.cpp (dev-only; never a run-time dependency).

Writes tests/golden/chat/chat_templates.json: {versions, templates, cases}. Each template
(name -> {source, bos_token, eos_token, origin}) is rendered by transformers' own
apply_chat_template(tokenize=False) on a tokenizer built here (a tiny WordLevel
TokenizersBackend with the template and the bos / eos tokens set), i.e. jinja2's
ImmutableSandboxedEnvironment with trim_blocks / lstrip_blocks and transformers' globals.
Each case is {template, name, messages, add_generation_prompt, extra, expected} or, when
rendering raises, {..., error} with the exception's message.

Where the templates come from. This machine has no access to the Hugging Face Hub, and no
installed package (transformers, its tests and docs, mistral_common, gguf) ships these
tokenizer_config.json files, so they were written out as follows; mixtral, qwen2_moe, qwen3
and olmoe are read from src/io/chat_template_reference.cpp (the copy `deltamoe make-model`
writes into tokenizer_config.json), the others are defined here:
  mixtral   the chat_template of mistralai/Mixtral-8x7B-Instruct-v0.1's
            tokenizer_config.json (the revision with system-message handling), written out
            from knowledge of that public file
  mixtral_v1_original  the first Mixtral / Mistral-7B-Instruct-v0.1 template (no system
            message), as quoted in llama.cpp's tests/test-chat-template.cpp
  mistral_v3  a Mistral-7B-Instruct-v0.3-style template (system message joined to the last
            user turn, namespace-based alternation check, [AVAILABLE_TOOLS] / [TOOL_CALLS]),
            written out from knowledge of that file; it may differ in details from the Hub
  qwen2_moe  Qwen1.5-MoE-A2.7B-Chat's ChatML template (default system prompt), from
            knowledge of that file (it is the same as Qwen1.5-*-Chat's)
  qwen3     Qwen3's ChatML template with thinking and tools, as copied in llama.cpp's
            models/templates/Qwen-Qwen3-0.6B.jinja (the Qwen3 MoE models ship the same one)
  olmoe     allenai/OLMoE-1B-7B-0924-Instruct's Tulu-style template, from knowledge of it
  feature_* small templates of our own that exercise the Jinja subset (whitespace control,
            loops, filters, tests, methods, Python value formatting)
Whatever their provenance, each expected string is what transformers renders for that
template, so the C++ interpreter is checked byte for byte against the reference.

Usage: /work/venv-hf/bin/python python/make_golden_chat.py   (needs transformers, tokenizers,
jinja2; no network)
"""
import importlib.metadata as md
import json
import os
import re

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests", "golden", "chat", "chat_templates.json")
REFERENCE = os.path.join(ROOT, "src", "io", "chat_template_reference.cpp")


def reference_templates():
    """The model families' templates, from the one copy deltamoe keeps (make-model writes them)."""
    with open(REFERENCE, encoding="utf-8") as f:
        text = f.read()
    found = dict(re.findall(r'const char\* const k(\w+) =\s*R"TPL\((.*?)\)TPL";', text, re.S))
    return found["Mixtral"], found["Qwen2Moe"], found["Qwen3Moe"], found["Olmoe"]


MIXTRAL, QWEN2_MOE, QWEN3, OLMOE = reference_templates()

MIXTRAL_V1 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)

MISTRAL_V3 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Our own templates: whitespace handling, loops, filters, tests, methods, value formatting.
FEATURE_WHITESPACE = """<header>
  {% if true %}
    indented text
  {% endif %}
{# a comment #}
  {#- stripped comment -#}
  a {{- ' b ' -}} c
  {%+ if true %}kept indent{% endif %}
{% for m in messages %}
    [{{ loop.index }}/{{ loop.length }}] {{ m.role }}
{% endfor %}
  {{ 'x' }}   {% if true %}after var{% endif %}
tail
"""

FEATURE_EXPR = r"""{%- set ns = namespace(n=0, names=[]) -%}
{%- for m in messages if m.role != 'system' -%}
{%- set ns.n = ns.n + 1 -%}
{%- set ns.names = ns.names + [m.role] -%}
{{ loop.index0 }}:{{ loop.first }}:{{ loop.last }}:{{ loop.revindex }}|
{%- endfor %}
n={{ ns.n }} names={{ ns.names }} joined={{ ns.names | join(', ') }}
{{ messages[0].content | length }} {{ messages[-1]['content'] | upper }} {{ messages[1:] | length }}
{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 * 2 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 3 - 5 }}
{{ 'a' ~ 1 ~ none ~ true }} {{ [1, 'two', none, false, 2.5, {'k': 'v'}] }} {{ {'a': 1, 'b': [true]} }}
{{ 'x' in 'xyz' }} {{ 3 in [1, 2] }} {{ 'k' not in {'k': 1} }} {{ not none }} {{ 1 == 1.0 }} {{ 'a' < 'b' }}
{{ undefined_var is defined }} {{ none is none }} {{ 'a' is string }} {{ 3 is number }} {{ 4 is even }} {{ messages is iterable }} {{ true is boolean }}
{{ undefined_var | default('dflt') }} {{ '' | default('empty', true) }} {{ messages | first | tojson }} {{ (messages | last).role }}
{{ '  pad\t\n' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'Hello World' | lower }}|{{ 'a-b-c' | replace('-', '+') }}|{{ 42 | string }}|{{ 'ab' * 3 }}
{{ ' s p '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}
{%- for k, v in {'one': 1, 'two': [2]}.items() %} {{ k }}={{ v }}{% endfor %}
{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('z', 'none') }} {{ {'a': 1}.get('z') }} {{ 'abcdef'[1:4] }} {{ 'abcdef'[::-1] }} {{ [1,2,3,4][::2] }} {{ 'héllo'[1] }}
{{ 'yes' if messages else 'no' }} {{ 'x' if false }} {{ {'z': 1, 'a': 'é', 'n': none} | tojson }} {{ [1, {'b': 2}] | tojson(indent=2) }}
{{ range(3) | list }} {{ range(1, 10, 3) | join('-') }} {{ messages | map(attribute='role') | join(',') }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }}
{%- for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %} {{ i }}{% endfor %}
{% for x in [] %}never{% else %}empty loop{% endfor %}
{% set block %}captured {{ 1 + 1 }}{% endset %}{{ block | upper }}
{{ "it's" }} {{ ['it\'s', "q\"uote", 'tab\there', 'nl\nx', 'back\\slash', 'üñí'] }} {{ 1.0 }} {{ 100.0 }} {{ 1e-5 }} {{ 1.5e16 }} {{ 2.0 ** 0.5 }}
{{ 'Hello World' | title }} {{ 'hello world'.title() }} {{ 'hELLO' | capitalize }} {{ [3, 1, 3] | unique | list }} {{ [1, 2, 3] | reverse | list }} {{ -3 | abs }} {{ '12' | int + 1 }}
{{ '\u00e9\x41\101\q' }}
"""

FEATURE_UNICODE = """{%- for m in messages -%}
{{ m.role | upper }} ({{ m.content | length }} chars): {{ m.content | trim }}|{{ m.content.strip() }}|{{ m.content.split() | length }}
{% endfor -%}
{{ 'Straße ÄÖÜ ǆ' | upper }} {{ 'ÀÉÎ' | lower }}"""

TEMPLATES = {
    "mixtral": (MIXTRAL, "<s>", "</s>", "mistralai/Mixtral-8x7B-Instruct-v0.1 tokenizer_config.json (from knowledge)"),
    "mixtral_v1_original": (MIXTRAL_V1, "<s>", "</s>", "first Mixtral/Mistral-Instruct template (llama.cpp tests/test-chat-template.cpp)"),
    "mistral_v3": (MISTRAL_V3, "<s>", "</s>", "Mistral-7B-Instruct-v0.3-style (from knowledge; may differ in details)"),
    "qwen2_moe": (QWEN2_MOE, None, "<|im_end|>", "Qwen/Qwen1.5-MoE-A2.7B-Chat tokenizer_config.json (from knowledge)"),
    "qwen3": (QWEN3, None, "<|im_end|>", "Qwen3 (llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja)"),
    "olmoe": (OLMOE, "<|endoftext|>", "<|endoftext|>", "allenai/OLMoE-1B-7B-0924-Instruct tokenizer_config.json (from knowledge)"),
    "feature_whitespace": (FEATURE_WHITESPACE, "<s>", "</s>", "ours"),
    "feature_expr": (FEATURE_EXPR, "<s>", "</s>", "ours"),
    "feature_unicode": (FEATURE_UNICODE, "<s>", "</s>", "ours"),
}


def msg(role, content):
    return {"role": role, "content": content}


SYS = msg("system", "You are a helpful assistant.")
U1 = msg("user", "Hello, who are you?")
A1 = msg("assistant", "I am an assistant.")
U2 = msg("user", "What is 2+2?")
UNICODE = msg("user", "Grüße aus Köln! 你好，世界。 Ünïcödé — “quotes” … 🙂👍🏽")
SPACES = msg("user", "  leading spaces\n\n\ttabs and\r\nCRLF  \n")
A_SPACES = msg("assistant", "   padded answer \u00a0\n")

CONVERSATIONS = {
    "system_user": [SYS, U1],
    "user_only": [U1],
    "multi_turn": [U1, A1, U2],
    "system_multi_turn": [SYS, U1, A1, U2],
    "unicode": [UNICODE],
    "whitespace": [SPACES, A_SPACES, U2],
    "ends_with_assistant": [U1, A1],
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}]


def extra_cases():
    """Template-specific conversations: errors, tools, thinking."""
    return [
        ("mixtral", "invalid_user_user", [U1, U2], True, {}),
        ("mixtral", "invalid_role", [U1, msg("tool", "x")], True, {}),
        ("mixtral_v1_original", "invalid_starts_with_assistant", [A1, U1], True, {}),
        ("mistral_v3", "invalid_user_user", [SYS, U1, U2], True, {}),
        ("mistral_v3", "tools", [SYS, U1, A1, U2], True, {"tools": TOOLS}),
        ("mistral_v3", "tool_calls", [U1, {"role": "assistant", "tool_calls": [
            {"id": "abcDEF123", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"}], True, {}),
        ("mistral_v3", "bad_tool_call_id", [U1, {"role": "assistant", "tool_calls": [
            {"id": "short", "function": {"name": "f", "arguments": {}}}]}], True, {}),
        ("qwen3", "tools", [SYS, U1], True, {"tools": TOOLS}),
        ("qwen3", "no_thinking", [U1], True, {"enable_thinking": False}),
        ("qwen3", "thinking_in_content", [U1, msg("assistant", "<think>\nLet me think.\n</think>\n\nThe answer."), U2], True, {}),
        ("qwen3", "thinking_last", [U1, msg("assistant", "<think>\nHmm.\n</think>\n\nFinal.")], False, {}),
        ("qwen3", "reasoning_field", [U1, {"role": "assistant", "content": "Four.", "reasoning_content": "2+2=4"}], False, {}),
        ("qwen3", "tool_round_trip", [U1, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
            {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "22C"}], True, {"tools": TOOLS}),
        ("feature_expr", "expr", [SYS, U1, A1, U2], True, {}),
        ("feature_whitespace", "whitespace", [U1, A1], True, {}),
        ("feature_unicode", "unicode", [UNICODE, SPACES, A_SPACES], True, {}),
    ]


def make_tokenizer(source, bos, eos):
    vocab = {"<unk>": 0}
    for t in (bos, eos):
        if t and t not in vocab:
            vocab[t] = len(vocab)
    kwargs = {"bos_token": bos} if bos else {}
    if eos:
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   chat_template=source, **kwargs)


def render(tok, messages, agp, extra):
    kwargs = dict(extra)
    tools = kwargs.pop("tools", None)
    try:
        return {"expected": tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                                    add_generation_prompt=agp, **kwargs)}
    except Exception as e:  # jinja2.TemplateError from raise_exception, or a template bug
        return {"error": str(e), "error_type": type(e).__name__}


def main():
    toks = {name: make_tokenizer(src, bos, eos) for name, (src, bos, eos, _) in TEMPLATES.items()}
    cases = []
    model_templates = ["mixtral", "mixtral_v1_original", "mistral_v3", "qwen2_moe", "qwen3", "olmoe"]
    for name in model_templates:
        for conv_name, messages in CONVERSATIONS.items():
            for agp in (True, False):
                case = {"template": name, "name": f"{conv_name}_{'gen' if agp else 'nogen'}",
                        "messages": messages, "add_generation_prompt": agp, "extra": {}}
                case.update(render(toks[name], messages, agp, {}))
                cases.append(case)
    for name, case_name, messages, agp, extra in extra_cases():
        case = {"template": name, "name": case_name, "messages": messages,
                "add_generation_prompt": agp, "extra": extra}
        case.update(render(toks[name], messages, agp, extra))
        cases.append(case)
    out = {
        "versions": {p: md.version(p) for p in ("transformers", "jinja2", "tokenizers")},
        "templates": {name: {"source": src, "bos_token": bos or "", "eos_token": eos or "", "origin": origin}
                      for name, (src, bos, eos, origin) in TEMPLATES.items()},
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum("error" in c for c in cases)
    print(f"wrote {OUT}: {len(TEMPLATES)} templates, {len(cases)} cases ({errors} raise)")
    for c in cases:
        if "error" in c:
            print(f"  {c['template']}/{c['name']}: {c['error_type']}: {c['error']}")


if __name__ == "__main__":
    main()
