"""Chat turns as text: a model's chat template, rendered in a sandbox.

A language model reads text; `/v1/chat/completions` turns the messages into the text that continues as the
assistant's reply with the template of the model's manifest (`chat_template`, Jinja, as the ecosystem
writes them: `messages`, `add_generation_prompt`, `bos_token`, `eos_token`), rendered by Jinja's immutable
sandbox (no attribute access to Python internals, no mutation). A model without one gets a plain default:

    System text
    User: Hello
    Assistant: Hi there.
    User: How are you?
    Assistant:

and its replies end where the model starts the next user turn (`chat_stop`, default "\\nUser:"). The
default writes an assistant message right after "Assistant:" as the model wrote it (its own leading space):
a client that resends the conversation resends exactly the text the model read and wrote, so the prefix
cache resumes at the end of the previous turn.
"""
from __future__ import annotations

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}{{ '\\n' }}"
    "{% elif m.role == 'user' %}User: {{ m.content }}{{ '\\n' }}"
    "{% else %}Assistant:{{ m.content }}{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")
DEFAULT_STOP = ["\nUser:"]


class ChatTemplateError(ValueError):
    pass


class ChatFormat:
    def __init__(self, template: str | None = None, stop: list[str] | None = None):
        self.source = template or DEFAULT_TEMPLATE
        self.stop = list(stop) if stop is not None else (DEFAULT_STOP if template is None else [])
        env = ImmutableSandboxedEnvironment(keep_trailing_newline=True)
        try:
            self.template = env.from_string(self.source)
        except TemplateError as e:
            raise ChatTemplateError(f"chat_template does not compile: {e}") from None

    @classmethod
    def of(cls, manifest: dict) -> "ChatFormat":
        return cls(manifest.get("chat_template"), manifest.get("chat_stop"))

    def render(self, messages: list[dict]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
        except TemplateError as e:
            raise ChatTemplateError(f"the model's chat template failed on these messages: {e}") from None
