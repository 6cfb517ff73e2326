"""Golden prompt strings (datasets-and-models spec, section 4.5) and template helpers."""

from __future__ import annotations

import jinja2
import pytest

from medbench.backbones.templates import TEMPLATES, TINY, get_template

Q = "Is the liver normal?"
HUMAN = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
         "detailed, and polite answers to the human's questions.")
GOLDEN = {
    "simple": (HUMAN + "###Human: Hi!###Assistant: Hi there!  How can I help you today?\n###Human: "
               "Is the liver normal?\n<im_start><im_patch><im_end>###", "<im_patch>"),
    "a3tune_v1": (HUMAN + "###Human: <im_start><im_patch><im_end>\nIs the liver normal?###", "<im_patch>"),
    "mistral_instruct": ("[INST] <image>\nIs the liver normal? [/INST]", "<image>"),
    "vicuna_v1": ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
                  "Is the liver normal? ASSISTANT:", "<image>"),
    "huatuogpt": ("<|user|>\n<image>\nIs the liver normal?\n<|assistant|>\n", "<image>"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_prompt(name: str) -> None:
    expected, image = GOLDEN[name]
    assert get_template(name).render(Q, image) == expected
    assert get_template(name).render(f"  {Q}\n", image) == expected


def test_tiny_unchanged() -> None:
    assert TINY.prompt == "USER: {image}\n{question} ASSISTANT:"
    assert TINY.target("yes") == " yes</s>"
    assert TINY.render(Q, "<image>") == "USER: <image>\nIs the liver normal? ASSISTANT:"


def test_simple_has_two_spaces_and_stop() -> None:
    t = get_template("simple")
    assert "Hi there!  How" in t.prompt
    assert t.stop == "###" and t.clean("Assistant: The liver is normal.###Human: more") == "The liver is normal."


def test_bos_and_eos_per_family() -> None:
    assert not get_template("huatuogpt").add_bos and get_template("huatuogpt").eos == "<|endoftext|>"
    assert all(get_template(n).add_bos for n in ("simple", "a3tune_v1", "vicuna_v1", "mistral_instruct"))
    assert get_template("vicuna_v1").target("no") == " no</s>"
    assert get_template("a3tune_v1").target("no") == "Assistant: no###"


def test_unknown_template_lists_names() -> None:
    with pytest.raises(KeyError, match="vicuna_v1"):
        get_template("vicuna")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_chat_template_renders_the_golden_string(name: str) -> None:
    expected, image = GOLDEN[name]
    tpl = jinja2.Environment().from_string(TEMPLATES[name].chat_template(image))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q}]}]
    assert tpl.render(messages=messages) == expected
    with_answer = messages + [{"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]
    assert tpl.render(messages=with_answer) == expected + TEMPLATES[name].target("yes")
