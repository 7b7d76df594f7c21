"""Drives a deltamoe LLM server with the unmodified OpenAI Python client (PyPI `openai`).

Run by tests/cli/serve_openai_client.sh: python3 openai_client_check.py PORT MODEL
Checks completions and chat completions, streamed and not, and that a 400 surfaces as the
client's BadRequestError. Exits non-zero with a message on any mismatch.
"""
import sys

import openai
from openai import OpenAI


def main() -> None:
    port, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    models = [m.id for m in client.models.list()]
    assert models == [model], models

    c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert c.object == "text_completion", c
    assert c.usage.completion_tokens == 8, c.usage
    assert c.choices[0].finish_reason == "length", c.choices[0]
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True,
        extra_body={"ignore_eos": True}) if ch.choices)
    assert streamed == c.choices[0].text, (streamed, c.choices[0].text)

    msgs = [{"role": "user", "content": "Hello"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].message.role == "assistant", r
    assert r.usage.completion_tokens == 6, r.usage
    parts, roles, usage = [], set(), None
    for ch in client.chat.completions.create(model=model, messages=msgs, max_tokens=6,
                                             temperature=0, stream=True,
                                             stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True}):
        if ch.usage:
            usage = ch.usage
        for choice in ch.choices:
            if choice.delta.role:
                roles.add(choice.delta.role)
            parts.append(choice.delta.content or "")
    assert "".join(parts) == r.choices[0].message.content, (parts, r.choices[0].message.content)
    assert roles == {"assistant"}, roles
    assert usage is not None and usage.completion_tokens == 6, usage

    try:
        client.completions.create(model=model, prompt="x", max_tokens=10**6)
        raise AssertionError("an impossible request was accepted")
    except openai.BadRequestError as e:
        assert "context" in str(e), e
    print("openai client: ok")


if __name__ == "__main__":
    main()
