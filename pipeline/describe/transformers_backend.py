"""The transformers backend: option scoring on CPU or GPU, each distinct token through the model once.

A batch's prompts share their start (the system turn): it is encoded once and its KV
cache repeated over them. Each prompt is then one row: its own tokens, then its options
as a token trie (options that begin alike share those tokens; an option's last token is
never fed, since nothing it predicts is scored), under an attention mask that lets every
token see exactly the tokens before it in its own sequence. Prompts are grouped by size
so that rows pad little. On the demo this is 1.7× faster than encoding each prompt once
and copying its cache per option (2.2× on a loaded machine; 28 % fewer tokens through the
model, no cache copies, a log-sum-exp instead of a full log-softmax) and makes the same
choice for every prompt (bench/REPORT.md). What is left is three quarters the model's own
float32 matrix products: a further gain on a CPU has to come from fewer tokens; the GPU
path is vLLM.

`score_one_by_one` is the plain reference (each option as its own full sequence, no
padding, no cache); tests check the batched scores against it and against choices
recorded with the previous scorer.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch

from pipeline.describe.backends import ChoiceBackend, first_line
from pipeline.describe.prompts import EncodedPrompt, Prompt
from pipeline.describe.scoring import OptionLikelihoods, OptionScores, score_prompts
from pipeline.errors import MELUserError

TOKENS_PER_FORWARD = 1024  # rows × width of one forward pass: larger batches gained nothing on CPU
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
        return score_prompts(prompts, self.tokenizer, lambda encoded: score_grouped(self.model, encoded, self.pad_id),
                             self.baseline_memo)

    def close(self) -> None:
        for attribute in ("model", "tokenizer", "baseline_memo"):
            self.__dict__.pop(attribute, None)
        self.loaded = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class PromptTree:
    """One prompt laid out as a row: its own prompt tokens, then its options as a token trie.

    Row index i holds token `tokens[i]` at position id `positions[i]` (the shared prefix holds
    the first ones) and attends to the rows of its `parents` chain. Options that begin alike share their
    first tokens, and an option's last token is never fed: nothing it predicts is scored.
    `targets[k]` lists, for option k, (row predicting the token, token) per option token.
    """

    tokens: list[int]
    positions: list[int]
    parents: list[int]
    targets: list[list[tuple[int, int]]]

    @classmethod
    def of(cls, prompt: EncodedPrompt, shared: int) -> "PromptTree":
        own = prompt.prefix_ids[shared:]
        tree = cls(list(own), list(range(shared, shared + len(own))), list(range(-1, len(own) - 1)), [])
        children: dict[tuple[int, int], int] = {}
        for ids in prompt.option_ids:
            at, path = len(own) - 1, []
            for depth, token in enumerate(ids):
                path.append((at, token))
                if depth == len(ids) - 1:
                    break
                if (at, token) not in children:
                    children[(at, token)] = len(tree.tokens)
                    tree.tokens.append(token)
                    tree.positions.append(shared + len(own) + depth)
                    tree.parents.append(at)
                at = children[(at, token)]
            tree.targets.append(path)
        return tree

    def visible(self) -> torch.Tensor:
        """[rows, rows] bool: row i sees row j when j is i or one of its ancestors."""
        seen = torch.zeros(len(self.tokens), len(self.tokens), dtype=torch.bool)
        for row, parent in enumerate(self.parents):
            if parent >= 0:
                seen[row] = seen[parent]
            seen[row, row] = True
        return seen


def shared_prefix_length(prompts: list[EncodedPrompt]) -> int:
    """Tokens every prompt of the batch starts with (the system turn), leaving each prompt one of its own."""
    first = prompts[0].prefix_ids
    shared = min(len(p.prefix_ids) for p in prompts) - 1
    for p in prompts[1:]:
        same = 0
        while same < shared and p.prefix_ids[same] == first[same]:
            same += 1
        shared = same
    return max(shared, 0)


def score_grouped(model, prompts: list[EncodedPrompt], pad_id: int,
                  token_budget: int = TOKENS_PER_FORWARD) -> list[OptionLikelihoods]:
    """`score_batch` over groups of prompts of similar size, so that rows are padded little."""
    shared = shared_prefix_length(prompts)
    sizes = [len(PromptTree.of(p, shared).tokens) for p in prompts]
    groups, group = [], []
    for index in sorted(range(len(prompts)), key=sizes.__getitem__):  # ascending: the newest is the widest
        if group and sizes[index] * (len(group) + 1) > token_budget:
            groups.append(group)
            group = []
        group.append(index)
    groups.append(group)
    results: list[OptionLikelihoods | None] = [None] * len(prompts)
    for group in groups:
        for at, scores in zip(group, score_batch(model, [prompts[i] for i in group], pad_id)):
            results[at] = scores
    return results


@torch.inference_mode()
def score_batch(model, prompts: list[EncodedPrompt], pad_id: int) -> list[OptionLikelihoods]:
    """Log-likelihood of every option of every prompt, each distinct token run through the model once.

    The prefix all prompts share is encoded once and its KV cache repeated over them; each
    prompt is then one left-padded row: its own tokens followed by its options' token trie,
    with an attention mask that lets a token see exactly the tokens before it in its own
    sequence, and position ids as if each option followed its prompt alone. Only the rows
    that predict an option token (the prompt's last, the trie's inner nodes) reach the LM
    head; they form the tail of every row, so `logits_to_keep` takes them.
    """
    device = next(model.parameters()).device
    shared = shared_prefix_length(prompts)
    cache = None
    if shared:
        head = model(input_ids=torch.tensor([prompts[0].prefix_ids[:shared]], device=device), use_cache=True,
                     logits_to_keep=1)
        cache = head.cache if hasattr(head, "cache") else head.past_key_values
        cache.batch_repeat_interleave(len(prompts))
    trees = [PromptTree.of(p, shared) for p in prompts]
    width = max(len(t.tokens) for t in trees)
    keep = max(len(t.tokens) - len(p.prefix_ids) + shared + 1 for t, p in zip(trees, prompts))
    tokens = torch.full((len(trees), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(trees), width), dtype=torch.long)
    mask = torch.zeros((len(trees), 1, width, shared + width), dtype=torch.bool)
    mask[:, 0, :, :shared] = True  # everyone sees the shared prefix
    mask[:, 0, torch.arange(width), shared + torch.arange(width)] = True  # padding sees itself, never NaN
    for row, tree in enumerate(trees):
        pad = width - len(tree.tokens)
        tokens[row, pad:] = torch.tensor(tree.tokens)
        positions[row, pad:] = torch.tensor(tree.positions)
        mask[row, 0, pad:, shared + pad:] = tree.visible()
    logits = model(input_ids=tokens.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   use_cache=cache is not None, logits_to_keep=keep,
                   **({cache_argument(model): cache} if cache is not None else {})).logits.float()
    log_norm = logits.logsumexp(-1)  # [prompts, keep]: log of each row's softmax denominator
    rows, columns, targets, owners = [], [], [], []
    option_count = 0
    for row, tree in enumerate(trees):
        first_kept = len(tree.tokens) - keep  # row index of the first kept logit (may be negative: padding)
        for path in tree.targets:
            for at, token in path:
                rows.append(row)
                columns.append(at - first_kept)
                targets.append(token)
                owners.append(option_count)
            option_count += 1
    rows_t, columns_t = torch.tensor(rows, device=device), torch.tensor(columns, device=device)
    token_logprobs = logits[rows_t, columns_t, torch.tensor(targets, device=device)] - log_norm[rows_t, columns_t]
    sums = torch.zeros(option_count, dtype=torch.float64, device=device)
    sums.index_add_(0, torch.tensor(owners, device=device), token_logprobs.double())
    sums = sums.tolist()
    results, at = [], 0
    for p in prompts:
        n = len(p.option_ids)
        results.append(OptionLikelihoods(sums[at : at + n], [len(ids) for ids in p.option_ids]))
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
