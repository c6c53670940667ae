"""Drives `loft serve` with OpenAI's official Python client (scripts/fetch.sh openai installs it), for
crates/loft-cli/tests/serve.rs: lists the models, then for each model named asks the prompt greedily, once whole
and once streamed, and prints what came back as one JSON object on stdout.

usage: openai_client_check.py BASE_URL API_KEY MAX_TOKENS PROMPT MODEL...
"""
import json
import sys

from openai import OpenAI


def main():
    base_url, api_key, max_tokens, prompt, *models = sys.argv[1:]
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    out = {"models": [m.id for m in client.models.list()], "answers": {}}
    messages = [{"role": "user", "content": prompt}]
    for model in models:
        whole = client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=int(max_tokens)
        )
        pieces, finish, usage = [], None, None
        stream = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=0,
            max_completion_tokens=int(max_tokens),
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
        out["answers"][model] = {
            "text": whole.choices[0].message.content,
            "finish_reason": whole.choices[0].finish_reason,
            "usage": whole.usage.model_dump(),
            "stream_text": "".join(pieces),
            "stream_pieces": len(pieces),
            "stream_finish_reason": finish,
            "stream_usage": usage,
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
