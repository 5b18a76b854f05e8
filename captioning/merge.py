"""Merging an original caption (often bare tags) into a generated one (paper eq. 10).

Two back ends share one interface, ``merge(originals, generated) -> merged``:

* ``RuleMerger`` (offline default): keeps the generated sentence and appends the original
  tags it lacks, dropping duplicates; it never adds a word that is in neither caption.
* ``LlmMerger``: a local instruct model through transformers text generation, prompted
  with the paper's merge instruction (``MERGE_PROMPT``).
"""

from __future__ import annotations

import re
from pathlib import Path

MERGE_PROMPT = (
    'Merge this music caption "{generated}" with the ground truth tags "{original}". '
    "Do not add any imaginary elements and try to keep the modified caption refined and "
    "accurate."
)

_WORD = re.compile(r"[a-z0-9#/]+")


def split_tags(caption: str) -> list[str]:
    """The comma/semicolon-separated pieces of a caption, stripped, in order, deduplicated."""
    pieces = [p.strip(" .\t\n\"'") for p in re.split(r"[,;\n]", caption)]
    return list(dict.fromkeys(p for p in pieces if p))


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class RuleMerger:
    """Appends the original tags that the generated caption does not already state.

    A tag counts as stated when all its words occur in the generated caption (case
    insensitive). The result is the generated sentence, then the missing tags, joined by
    commas: only punctuation is added.
    """

    name = "rule"

    def merge(self, originals: list[str], generated: list[str]) -> list[str]:
        """Merges each original caption into the generated caption at the same index."""
        merged = []
        for original, sentence in zip(originals, generated, strict=True):
            sentence = sentence.strip()
            present = _words(sentence)
            missing = []
            for tag in split_tags(original):
                words = _words(tag)
                if words and not words <= present:
                    missing.append(tag)
                    present |= words
            if not missing:
                merged.append(sentence)
                continue
            merged.append(f"{sentence.rstrip('.').rstrip()}, {', '.join(missing)}.")
        return merged


class LlmMerger:
    """Merges with a local instruct model (transformers ``AutoModelForCausalLM``).

    Args:
        model: Folder of the model and its tokenizer (no download is attempted).
        max_new_tokens: Length limit of a merged caption.
        batch_size: Prompts per ``generate`` call.
        device: Torch device; default CUDA when available.
        prompt: Template with ``{generated}`` and ``{original}``.

    Greedy decoding keeps merges reproducible. An empty answer falls back to
    ``RuleMerger`` for that row (``fallbacks`` counts them).
    """

    name = "llm"

    def __init__(
        self,
        model: str | Path,
        max_new_tokens: int = 96,
        batch_size: int = 8,
        device: str | None = None,
        prompt: str = MERGE_PROMPT,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True)
        self.model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prompt = prompt
        self.fallbacks = 0
        self._fallback = RuleMerger()

    def _render(self, original: str, generated: str) -> str:
        text = self.prompt.format(generated=generated, original=original)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text + "\n"

    def merge(self, originals: list[str], generated: list[str]) -> list[str]:
        """Merges each original caption into the generated caption at the same index."""
        import torch

        merged = []
        for start in range(0, len(originals), self.batch_size):
            chunk_o = originals[start : start + self.batch_size]
            chunk_g = generated[start : start + self.batch_size]
            prompts = [self._render(o, g) for o, g in zip(chunk_o, chunk_g, strict=True)]
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            answers = self.tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for answer, original, sentence in zip(answers, chunk_o, chunk_g, strict=True):
                cleaned = clean_answer(answer)
                if not cleaned:
                    self.fallbacks += 1
                    cleaned = self._fallback.merge([original], [sentence])[0]
                merged.append(cleaned)
        return merged


def clean_answer(answer: str) -> str:
    """First non-empty paragraph of a model's answer, without quotes or a leading label."""
    for paragraph in answer.strip().split("\n\n"):
        text = " ".join(paragraph.split())
        text = re.sub(r"^(merged|modified|refined)?\s*caption\s*:\s*", "", text, flags=re.I)
        text = text.strip().strip("\"'").strip()
        if text:
            return text
    return ""


def build_merger(backend: str, model: str | Path | None = None, **options):
    """``RuleMerger`` for ``"rule"``; ``LlmMerger(model, ...)`` for ``"llm"``.

    Raises:
        ValueError: On an unknown back end, or ``"llm"`` without a model folder.
    """
    if backend == "rule":
        return RuleMerger()
    if backend == "llm":
        if model is None:
            raise ValueError("the llm merger needs --llm-model FOLDER (a local instruct model)")
        return LlmMerger(model, **options)
    raise ValueError(f"unknown merger {backend!r}; choose 'rule' or 'llm'")
