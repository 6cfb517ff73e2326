"""Prompt templates: how a backbone wraps a question and where the image placeholder goes.

The real-model templates reproduce the reference conversation formats exactly (golden strings
in the datasets-and-models spec, section 4.5): LLaVA-Med v1 ``simple`` and the A3Tune v1 prompt
(``default`` with its example messages cleared), LLaVA ``vicuna_v1`` and ``mistral_instruct``,
and HuatuoGPT-Vision's ``cli.py`` format. ``{image}`` is replaced by the backbone's image token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    """A single-turn conversation format.

    ``prompt`` must contain ``{question}`` and ``{image}``; ``answer_suffix`` ends a training
    target (usually the end-of-sequence token). ``add_bos``: the prompt starts with the
    tokenizer's BOS. ``eos``: the token that ends an answer. ``stop``: a text that also ends an
    answer (cut by :meth:`clean`); ``strip_prefix``: removed from the start of an answer.
    """

    name: str
    prompt: str
    answer_prefix: str = " "
    answer_suffix: str = "</s>"
    add_bos: bool = True
    eos: str = "</s>"
    stop: str | None = None
    strip_prefix: str | None = None

    def render(self, question: str, image_token: str) -> str:
        return self.prompt.format(question=question.strip(), image=image_token)

    def target(self, answer: str) -> str:
        return f"{self.answer_prefix}{answer.strip()}{self.answer_suffix}"

    def clean(self, text: str) -> str:
        """A decoded answer cut at the stop text, without the speaker prefix."""
        if self.stop:
            text = text.split(self.stop, 1)[0]
        text = text.strip()
        if self.strip_prefix and text.startswith(self.strip_prefix):
            text = text[len(self.strip_prefix):].strip()
        return text

    def chat_template(self, image_token: str) -> str:
        """A Jinja chat template that renders one user turn (text + image) exactly like :meth:`render`.

        Shipped with converted checkpoints for other tools; medbench itself never applies it.
        """
        before_q, _, after_q = self.prompt.partition("{question}")

        def lit(part: str) -> str:
            return "{{ " + json.dumps(part.replace("{image}", image_token)) + " }}"

        return (
            "{%- set ns = namespace(q='') -%}"
            "{%- for m in messages if m['role'] == 'user' -%}"
            "{%- if m['content'] is string -%}{%- set ns.q = ns.q + m['content'] -%}"
            "{%- else -%}{%- for c in m['content'] if c['type'] == 'text' -%}"
            "{%- set ns.q = ns.q + c['text'] -%}{%- endfor -%}{%- endif -%}{%- endfor -%}"
            + lit(before_q) + "{{ ns.q | trim }}" + lit(after_q)
            + "{%- for m in messages if m['role'] == 'assistant' -%}"
            "{%- set a = m['content'] if m['content'] is string else m['content'][0]['text'] -%}"
            + "{{ " + json.dumps(self.answer_prefix) + " + (a | trim) + " + json.dumps(self.answer_suffix) + " }}"
            "{%- endfor -%}"
        )


TINY = PromptTemplate(name="tiny", prompt="USER: {image}\n{question} ASSISTANT:")

_HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the human's questions.")
_USER_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the user's questions.")

SIMPLE = PromptTemplate(
    name="simple",
    prompt=_HUMAN_SYSTEM + "###Human: Hi!###Assistant: Hi there!  How can I help you today?\n"
    "###Human: {question}\n<im_start>{image}<im_end>###",
    answer_prefix="Assistant: ", answer_suffix="###", stop="###", strip_prefix="Assistant:",
)
A3TUNE_V1 = PromptTemplate(
    name="a3tune_v1",
    prompt=_HUMAN_SYSTEM + "###Human: <im_start>{image}<im_end>\n{question}###",
    answer_prefix="Assistant: ", answer_suffix="###", stop="###", strip_prefix="Assistant:",
)
VICUNA_V1 = PromptTemplate(name="vicuna_v1", prompt=_USER_SYSTEM + " USER: {image}\n{question} ASSISTANT:")
MISTRAL_INSTRUCT = PromptTemplate(
    name="mistral_instruct", prompt="[INST] {image}\n{question} [/INST]", answer_suffix=" </s>",
)
HUATUOGPT = PromptTemplate(
    name="huatuogpt", prompt="<|user|>\n{image}\n{question}\n<|assistant|>\n", answer_prefix="",
    answer_suffix="<|endoftext|>", add_bos=False, eos="<|endoftext|>",
)

TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t for t in (TINY, SIMPLE, A3TUNE_V1, VICUNA_V1, MISTRAL_INSTRUCT, HUATUOGPT)
}


def get_template(name: str) -> PromptTemplate:
    """A template by name; unknown names list the known ones."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown prompt template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]
