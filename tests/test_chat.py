"""Chat messages: what a client may send, and the model's chat template."""

from __future__ import annotations

import pytest

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.chat import chat_template_ids, check_messages


@pytest.mark.parametrize("messages, match", [
    ([], "messages is empty"),
    (["hi"], r"messages\[0\] must be an object"),
    ([{"role": "robot", "content": "x"}], r"messages\[0\].role"),
    ([{"role": "user", "content": 3}], r"messages\[0\].content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "only text parts"),
])
def test_bad_messages(messages, match):
    with pytest.raises(InvalidInputError, match=match):
        check_messages(messages)


def test_text_parts_and_developer_role():
    got = check_messages([{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}])
    assert got == [{"role": "system", "content": "ab"}]



def test_the_template_ends_with_the_assistants_turn(tiny_tokenizer):
    ids = chat_template_ids(tiny_tokenizer, [{"role": "user", "content": "Hi"}], "tiny")
    assert tiny_tokenizer.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_a_model_without_a_template_is_named(tiny_tokenizer):
    from copy import deepcopy

    plain = deepcopy(tiny_tokenizer)
    plain.chat_template = None
    with pytest.raises(InvalidInputError, match="tiny.gguf has no chat template"):
        chat_template_ids(plain, [{"role": "user", "content": "Hi"}], "tiny.gguf")
