"""How good the captions of a refined corpus manifest are (the paper's Table 1, offline).

Where the true tags of every clip are known (the embedded corpus keeps them in
``meta.tags``), each caption set is scored by tag-level F1 against them: the original
captions (D_o), the generated ones (D_g) and the refined final captions (D_merge). The
CLAP filter of eq. 9 is scored by how many deliberately wrong original captions it removes
and how many correct ones it removes by mistake.
"""

from __future__ import annotations

import os
from typing import Any

from captioning.tags import corpus_tag_f1
from qamdt.manifest import ClipRecord, read_manifest

CAPTION_SETS = {
    "D_o (original)": "original_caption",
    "D_g (generated)": "generated_caption",
    "D_merge (final)": "final_caption",
}


def evaluate_captions(records: list[ClipRecord]) -> dict[str, Any]:
    """Tag F1 of each caption set and the eq. 9 removal rates.

    Args:
        records: Refined rows carrying ``meta.tags`` (and ``meta.caption_kind`` for the
            removal rates).

    Returns:
        ``{"clips", "tag_f1": {set: {"overall": {...}, field: {...}}}, "eq9": {...}}``.
    """
    truthful = [r for r in records if isinstance(r.meta.get("tags"), dict)]
    tag_scores = {
        name: corpus_tag_f1((getattr(r, field), r.meta["tags"]) for r in truthful)
        for name, field in CAPTION_SETS.items()
    }
    eq9: dict[str, Any] = {}
    refined = [r for r in truthful if "refine" in r.meta and "original_audio" in r.clap]
    if refined:

        def removed(record: ClipRecord) -> bool:
            return record.clap["original_audio"] <= record.meta["refine"]["rho2"]

        wrong = [r for r in refined if r.meta.get("caption_kind") == "wrong"]
        correct = [r for r in refined if r.meta.get("caption_kind") in ("sentence", "tags")]
        eq9 = {
            "wrong_captions": len(wrong),
            "wrong_removed_share": _share(sum(map(removed, wrong)), len(wrong)),
            "correct_captions": len(correct),
            "correct_removed_share": _share(sum(map(removed, correct)), len(correct)),
        }
    return {"clips": len(truthful), "tag_f1": tag_scores, "eq9": eq9}


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def evaluate_manifest(manifest: str | os.PathLike, split: str | None = "test") -> dict[str, Any]:
    """``evaluate_captions`` on the rows of one split (``None``: all rows)."""
    records = [r for r in read_manifest(manifest) if split is None or r.split == split]
    return {"split": split or "all", **evaluate_captions(records)}


def format_evaluation(result: dict[str, Any]) -> str:
    """A readable table of ``evaluate_manifest``'s result."""
    fields = [k for k in next(iter(result["tag_f1"].values())) if k not in ("clips",)]
    lines = [f"split {result['split']}, {result['clips']} clips: tag F1 against the truth"]
    lines.append(f"{'captions':<18}" + "".join(f"{f:>12}" for f in fields))
    for name, scores in result["tag_f1"].items():
        lines.append(f"{name:<18}" + "".join(f"{scores[f]['f1']:>12.3f}" for f in fields))
    eq9 = result.get("eq9") or {}
    if eq9:
        lines.append(
            f"eq. 9 removes {eq9['wrong_removed_share']} of {eq9['wrong_captions']} wrong "
            f"original captions and {eq9['correct_removed_share']} of "
            f"{eq9['correct_captions']} correct ones"
        )
    return "\n".join(lines)
