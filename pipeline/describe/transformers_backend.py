"""The transformers backend: option scoring on CPU or GPU, with the prompt encoded once.

Every option of a mention continues the same prompt, so the prompt (≈150 tokens) is
run once per mention and its KV cache is repeated over the options (≈10 tokens each):
about 8× fewer tokens through the model than packing prompt+option sequences, measured
in bench/description_selection.md. Prompts of a batch are left-padded so that their
last real token is the last column; options are right-padded after them, with explicit
position ids so that padding never shifts a position.

`score_one_by_one` is the plain reference (each option as its own full sequence, no
padding, no cache); tests check the batched scores against it.
"""

from __future__ import annotations

import inspect
import os

import torch

from pipeline.describe.backends import ChoiceBackend, first_line
from pipeline.describe.scoring import OptionLikelihoods, OptionScores, score_prompts
from pipeline.describe.prompts import EncodedPrompt, Prompt
from pipeline.errors import MELUserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersBackend(ChoiceBackend):
    name = "transformers"

    def resolved_device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self) -> str:
        if self.config.dtype != "auto":
            return self.config.dtype
        on_gpu = self.resolved_device().startswith("cuda")
        return "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model only: never reach for a hub
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = self.resolved_dtype()
        if dtype not in DTYPES:
            raise MELUserError(f"LLM dtype {dtype!r} is not one of auto, {', '.join(DTYPES)} (setting `dtype`).")
        folder = self.model_folder()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], local_files_only=True)
            self.model = model.to(self.resolved_device()).eval()
        except Exception as error:  # any loader failure: say which model and backend, in one sentence
            raise MELUserError(
                f"The transformers backend could not load model {self.location.display}: {first_line(error)}."
            ) from None
        self.baseline_memo = {}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def _score(self, prompts: list[Prompt]) -> list[OptionScores]:
        return score_prompts(prompts, self.tokenizer, lambda encoded: score_batch(self.model, encoded, self.pad_id),
                             self.baseline_memo)

    def close(self) -> None:
        for attribute in ("model", "tokenizer", "baseline_memo"):
            self.__dict__.pop(attribute, None)
        self.loaded = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@torch.inference_mode()
def score_batch(model, prompts: list[EncodedPrompt], pad_id: int) -> list[OptionLikelihoods]:
    """Log-likelihood of every option of every prompt: prompts once, options on a shared cache."""
    device = next(model.parameters()).device
    width = max(len(p.prefix_ids) for p in prompts)
    prefix = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros_like(prefix)
    for row, p in enumerate(prompts):
        prefix[row, width - len(p.prefix_ids):] = torch.tensor(p.prefix_ids)
        prefix_mask[row, width - len(p.prefix_ids):] = 1
    prefix, prefix_mask = prefix.to(device), prefix_mask.to(device)
    positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
    first = model(input_ids=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True,
                  logits_to_keep=1)  # only the last prompt position predicts an option token

    owner = [row for row, p in enumerate(prompts) for _ in p.option_ids]
    options = [ids for p in prompts for ids in p.option_ids]
    owner_index = torch.tensor(owner, device=device)
    cache = first.cache if hasattr(first, "cache") else first.past_key_values
    cache.batch_select_indices(owner_index)  # each prompt's cache, once per option
    longest = max(len(ids) for ids in options)
    tokens = torch.full((len(options), longest), pad_id, dtype=torch.long)
    token_mask = torch.zeros_like(tokens)
    for row, ids in enumerate(options):
        tokens[row, : len(ids)] = torch.tensor(ids)
        token_mask[row, : len(ids)] = 1
    tokens, token_mask = tokens.to(device), token_mask.to(device)
    start = prefix_mask.sum(-1)[owner_index]
    second = model(
        input_ids=tokens,
        attention_mask=torch.cat([prefix_mask[owner_index], token_mask], dim=1),
        position_ids=start[:, None] + torch.arange(longest, device=device),
        use_cache=True,
        **{cache_argument(model): cache},
    )
    # Token t of an option is predicted by the logits before it: the prompt's last for t=0.
    logits = torch.cat([first.logits[owner_index, -1:], second.logits[:, :-1]], dim=1).float()
    token_logprobs = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1) * token_mask
    sums = token_logprobs.sum(-1).tolist()
    counts = token_mask.sum(-1).tolist()
    results, at = [], 0
    for p in prompts:
        n = len(p.option_ids)
        results.append(OptionLikelihoods(sums[at : at + n], counts[at : at + n]))
        at += n
    return results


def cache_argument(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; the project allows releases before it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def score_one_by_one(model, prompt: EncodedPrompt) -> OptionLikelihoods:
    """Reference scorer: each option as one unpadded sequence, no cache reuse."""
    device = next(model.parameters()).device
    sums, counts = [], []
    for ids in prompt.option_ids:
        sequence = torch.tensor([prompt.prefix_ids + ids], device=device)
        logprobs = model(input_ids=sequence).logits[0, :-1].float().log_softmax(-1)
        targets = sequence[0, 1:]
        picked = logprobs.gather(-1, targets[:, None]).squeeze(-1)[-len(ids):]
        sums.append(picked.sum().item())
        counts.append(len(ids))
    return OptionLikelihoods(sums, counts)
