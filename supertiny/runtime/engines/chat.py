"""Chat messages: checking what a client sent, and the model's chat template.

Messages arrive in OpenAI's shape (from :mod:`supertiny.runtime.serving.openai_api` or a library caller):
roles system/user/assistant/tool/developer, content a string or a list of text
parts. :func:`check_messages` turns them into what a chat template expects or names
the bad one; :func:`chat_template_ids` applies the tokenizer's template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supertiny.errors import InvalidInputError

ROLES = ("system", "user", "assistant", "tool", "developer")


def check_messages(messages: Sequence[Any]) -> list[dict[str, str]]:
    """Chat messages as the template wants them, or a clear error naming the bad one."""
    out = []
    if not messages:
        raise InvalidInputError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidInputError(f"messages[{i}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidInputError(f"messages[{i}].role must be system, user, assistant or tool; got {role!r}")
        if isinstance(content, list):  # OpenAI content parts: only text parts are meaningful here
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise InvalidInputError(f"messages[{i}].content: only text parts are supported")
            content = "".join(parts)
        if not isinstance(content, str):
            raise InvalidInputError(f"messages[{i}].content must be a string")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def chat_template_ids(tokenizer: Any, messages: Sequence[Any], model_name: str) -> list[int]:
    """Token ids of a chat, ending with the assistant's turn (the tokenizer's template).

    ``model_name`` names the model in the error when it has no chat template.
    """
    msgs = check_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInputError(f"{model_name} has no chat template; send a plain prompt instead")
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return list(ids)
