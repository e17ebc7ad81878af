"""The one prompt builder of the description choice, shared by every LLM backend.

A prompt is a short chat that asks what the mention is in its sentence; the
assistant's reply is then *scored*, never generated: for each option (the candidate
descriptions, then "none of these"), the likelihood of the reply
`<mention> is a <option>.<end of turn>`. The end-of-turn marker is part of what is
scored, so a short option ("city") cannot win merely by being a prefix of a longer
one ("city in France").

The options are not listed in the question. Measured on demo dev mentions with
SmolLM2-135M (bench/description_selection.md), listing them made the model copy
whichever listed option it likes best, with or without the sentence, so the sentence
barely moved the scores: accuracy 0.38-0.50 with the list against 0.75-0.88 without
(same reply and rule, 8-16 mentions).

Each prompt has a baseline twin: the same chat with the sentence replaced by "N/A".
The choice rule (`scoring.SCORING_RULE = "pmi"`) credits an option with how much the
sentence raises its likelihood over the baseline, which cancels what a small model
prefers regardless of the sentence (the first listed option, common words).

Both backends turn a prompt into token ids through `encode_prompt`, with the tokenizer
and chat template of the same HF folder, so vLLM and transformers score the very same
token sequences. The cache key comes from `Prompt.key_text()` and needs no model: a
re-run with every prompt cached never loads one.

Texts are clipped (the sentence around the mention, long descriptions at a word) since
a 135M model on two CPU cores pays for every token and a long prompt does not help it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PROMPT_VERSION = "3"  # bump whenever a text below or the scored reply changes
NONE_OF_THESE = "none of these"
NO_SENTENCE = "N/A"
MAX_SENTENCE_CHARS = 300
MAX_DESCRIPTION_CHARS = 120
SYSTEM = "You link a mention in a sentence to the description of the thing it names."
PLAIN_TURN_END = "\n"  # reply terminator for tokenizers without a chat template


@dataclass(frozen=True)
class Prompt:
    """The question, its baseline twin without the sentence, and the replies to score.

    Not an "option number" question: a 135M model answers those near chance
    (NOTES.md; 1 of 3 toy cases), while scoring whole replies picks by meaning.
    """

    question: tuple[tuple[str, str], ...]  # (role, content) turns
    baseline: tuple[tuple[str, str], ...]
    reply_start: str  # the start of the reply every option shares
    options: tuple[str, ...]  # the descriptions, then NONE_OF_THESE last

    @property
    def none_index(self) -> int:
        return len(self.options) - 1

    def key_text(self) -> str:
        """Everything the model sees, as one string: the cache key is a hash of it."""
        return json.dumps(self.to_json(), ensure_ascii=False)

    def baseline_key(self) -> str:
        """Identifies the baseline: mentions with the same text and options share it."""
        return json.dumps([self.baseline, self.reply_start, self.options], ensure_ascii=False)

    def to_json(self) -> dict:
        return {"question": [list(t) for t in self.question], "baseline": [list(t) for t in self.baseline],
                "reply_start": self.reply_start, "options": list(self.options)}

    @classmethod
    def from_json(cls, data: dict) -> "Prompt":
        return cls(tuple(tuple(t) for t in data["question"]), tuple(tuple(t) for t in data["baseline"]),
                   data["reply_start"], tuple(data["options"]))


def build_prompt(mention: str, sentence: str, descriptions: list[str]) -> Prompt:
    """Ask what `mention` is in `sentence`; the descriptions and "none of these" are the replies scored."""
    mention = " ".join(mention.split())
    options = tuple(clip_description(d) for d in descriptions) + (NONE_OF_THESE,)
    # a mention kept without a mention string (see pipeline.ingest) is asked about as what its sentence names
    subject = f'"{mention}"' if mention else "the thing named"

    def chat(shown_sentence: str) -> tuple[tuple[str, str], ...]:
        return (("system", SYSTEM), ("user", f"Sentence: {shown_sentence}\nWhat is {subject} in this sentence?"))

    return Prompt(question=chat(clip_sentence(sentence, mention)), baseline=chat(NO_SENTENCE),
                  reply_start=f"{mention or 'It'} is a", options=options)


def clip_sentence(sentence: str, mention: str, limit: int = MAX_SENTENCE_CHARS) -> str:
    """The sentence, or a window of it centred on the mention when it is too long."""
    sentence = " ".join(sentence.split())
    if len(sentence) <= limit:
        return sentence
    at = sentence.lower().find(mention.strip().lower())
    centre = at + len(mention) // 2 if at >= 0 else 0
    start = max(0, min(centre - limit // 2, len(sentence) - limit))
    window = sentence[start : start + limit]
    return ("…" if start > 0 else "") + window.strip() + ("…" if start + limit < len(sentence) else "")


def clip_description(description: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    text = " ".join(description.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + "…"


# ---------------------------------------------------------------- token ids

@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids to score: each option continues the shared prefix."""

    prefix_ids: list[int]
    option_ids: list[list[int]]


def render_chat(tokenizer, turns, reply_start: str, options) -> tuple[str, list[str]]:
    """The prefix text (chat + reply start) and each option's continuation, via the chat template."""
    replies = [f"{reply_start} {option}." for option in options]
    chat = [{"role": role, "content": content} for role, content in turns]
    if getattr(tokenizer, "chat_template", None):
        prefix = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + reply_start
        continuations = []
        for reply in replies:
            full = tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": reply}], tokenize=False)
            if not full.startswith(prefix):
                raise ValueError("The chat template does not render the assistant's reply verbatim after the "
                                 "prompt; it cannot be used to score options.")
            continuations.append(full[len(prefix):].rstrip())
        return prefix, continuations
    prefix = "".join(f"{role.capitalize()}: {content}\n" for role, content in turns) + f"Assistant: {reply_start}"
    return prefix, [reply[len(reply_start):] + PLAIN_TURN_END for reply in replies]


def encode_prompt(tokenizer, prompt: Prompt) -> tuple[EncodedPrompt, EncodedPrompt]:
    """Token ids of the question and of its baseline, each with every option's continuation."""
    return tuple(_encode(tokenizer, *render_chat(tokenizer, turns, prompt.reply_start, prompt.options))
                 for turns in (prompt.question, prompt.baseline))


def _encode(tokenizer, prefix: str, continuations: list[str]) -> EncodedPrompt:
    has_template = bool(getattr(tokenizer, "chat_template", None))  # the template writes its own specials
    prefix_ids = tokenizer(prefix, add_special_tokens=not has_template)["input_ids"]
    option_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    return EncodedPrompt(list(prefix_ids), [list(ids) for ids in option_ids])
