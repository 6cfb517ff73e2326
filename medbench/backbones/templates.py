"""Prompt templates: how a backbone wraps a question and where the image placeholder goes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    """A single-turn conversation format.

    ``prompt`` must contain ``{question}`` and ``{image}``; ``answer_suffix`` ends a training
    target (usually the end-of-sequence token).
    """

    name: str
    prompt: str
    answer_prefix: str = " "
    answer_suffix: str = "</s>"

    def render(self, question: str, image_token: str) -> str:
        return self.prompt.format(question=question.strip(), image=image_token)

    def target(self, answer: str) -> str:
        return f"{self.answer_prefix}{answer.strip()}{self.answer_suffix}"


TINY = PromptTemplate(name="tiny", prompt="USER: {image}\n{question} ASSISTANT:")

TEMPLATES: dict[str, PromptTemplate] = {TINY.name: TINY}
