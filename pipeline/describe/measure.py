"""Selection accuracy of the description choice, against simple baselines, per split.

The right choice for a mention is the option whose candidates include its gold QID;
when no offered option does (the gold item was not found, or has no description), or
the mention is nil, "none of these" is right. Mentions without options are not scored
(they are counted), nor are mentions without a gold label.

Reported per split and overall:
* `llm`: the chosen option is right;
* `first_hit`: always the first option, i.e. the best-ranked search hit with a description;
* `random_expected`: a uniform pick among the offered choices, "none of these" included
  (mean of 1 / (options + 1)); `random_seeded`: one seeded draw of it;
* `gold_offered`: share of mentions where the gold item's description is among the
  options: the ceiling on how many mentions can get their true description. An oracle
  that always picks right scores 1.0 by the definition above;
* `llm_when_gold_offered`: how often the LLM picks the gold description when it can;
  `llm_when_none_is_right`: how often it says "none of these" when that is right;
  `none_chosen`: how often it says "none of these" at all.
"""

from __future__ import annotations

import random
from collections import defaultdict

SEED = 0
METHODS = ("llm", "first_hit", "random_expected", "random_seeded")


def right_choice(item) -> int:
    """Index of the right option (the last index stands for "none of these")."""
    if not item.is_nil:
        for index, qids in enumerate(item.qids):
            if item.gold_qid in qids:
                return index
    return len(item.qids)


def selection_accuracy(options: list, choices: dict, seed: int = SEED) -> dict:
    """{split or "all": {method: accuracy, ...counts}}, from MentionOptions and their choices."""
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = defaultdict(list)
    for item in options:
        if item.key is None or (item.gold_qid is None and not item.is_nil):
            continue
        right = right_choice(item)
        choices_offered = len(item.qids) + 1
        outcome = {
            "llm": choices[item.key].chosen_index == right,
            "first_hit": right == 0,
            "random_expected": 1.0 / choices_offered,
            "random_seeded": rng.randrange(choices_offered) == right,
            "gold_offered": right < len(item.qids),
            "none_chosen": choices[item.key].chosen_index == len(item.qids),
        }
        groups[item.split].append(outcome)
        groups["all"].append(outcome)
    return {group: _summary(outcomes) for group, outcomes in sorted(groups.items())}


def _summary(outcomes: list[dict]) -> dict:
    n = len(outcomes)
    summary = {method: round(sum(o[method] for o in outcomes) / n, 4) for method in METHODS}
    offered = [o for o in outcomes if o["gold_offered"]]
    summary["gold_offered"] = round(len(offered) / n, 4)
    summary["llm_when_gold_offered"] = _share(offered, "llm")
    not_offered = [o for o in outcomes if not o["gold_offered"]]
    summary["llm_when_none_is_right"] = _share(not_offered, "llm")
    summary["none_chosen"] = _share(outcomes, "none_chosen")
    summary["scored_mentions"] = n
    return summary


def _share(outcomes: list[dict], flag: str) -> float | None:
    return round(sum(o[flag] for o in outcomes) / len(outcomes), 4) if outcomes else None


def accuracy_rows(accuracy: dict) -> list[dict]:
    """One row per split, for a markdown table."""
    order = [s for s in ("train", "dev", "test") if s in accuracy] + \
            [s for s in accuracy if s not in ("train", "dev", "test", "all")] + (["all"] if "all" in accuracy else [])
    return [{"split": split, "mentions scored": accuracy[split]["scored_mentions"],
             "LLM": accuracy[split]["llm"], "first hit": accuracy[split]["first_hit"],
             "random (expected)": accuracy[split]["random_expected"],
             "random (seed 0)": accuracy[split]["random_seeded"],
             "gold offered": accuracy[split]["gold_offered"],
             "LLM when gold offered": accuracy[split]["llm_when_gold_offered"],
             "LLM when none is right": accuracy[split]["llm_when_none_is_right"],
             "none chosen": accuracy[split]["none_chosen"]} for split in order]
