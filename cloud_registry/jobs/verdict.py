"""Whether a retraining job's candidate goes on to a rollout: the registry's decision, in one place.

A candidate is refused, in this order, when:

1. it is byte for byte a version the model has already (the same source model file): training changed
   nothing, and rolling it out would only make a duplicate;
2. the labels it was judged on look wrong: the parent agrees with them no better than chance, or one
   class holds most of them while the parent predicts that class for far fewer of the same inputs
   (a label file with every row "0" made a candidate score 100.00 against its parent's 8.24: the
   held-out check used the same bad labels);
3. it is worse than its parent on the held-out samples for some target (beyond `tolerance_points`);
4. it only ties with its parent and no labels came in since the data of the model's last job: the same
   data made an equal model, which is nothing to roll out.

Each refusal is one line, `rejected: <why>; hint: <what to do>`, recorded as the job's reason.
"""

from __future__ import annotations

from typing import Any

from registry_api import retraining as rs

LABELS_HINT = (
    "check the label file (edgectl retrain samples MODEL --export shows each sample and its prediction); "
    "evaluation.min_parent_agreement and evaluation.max_label_share set these checks"
)


def _figures_text(evaluation: dict[str, Any]) -> str:
    parts = [
        f"{target}: {f['metric']} {f['candidate']:.2f} vs parent {f['parent']:.2f} on {f['samples']} held-out"
        for target, f in sorted(evaluation.items())
    ]
    return "; ".join(parts) or "no held-out figures"


def label_problem(evaluation: dict[str, Any], policy: rs.EvaluationPolicy, labels: list[str]) -> str | None:
    """Why the held-out labels look wrong when set against the parent's own predictions; None when fine."""
    if not evaluation:
        return None
    target, figures = sorted(evaluation.items())[0]  # the labels are the same for every target
    label_counts: list[int] = figures.get("label_counts") or []
    parent_counts: list[int] = figures.get("parent_counts") or []
    total = sum(label_counts)
    if not total or len(parent_counts) != len(label_counts):
        return None  # an evaluation from before these figures were recorded
    chance = 100.0 / len(label_counts)
    floor = chance if policy.min_parent_agreement is None else policy.min_parent_agreement
    if policy.min_parent_agreement != 0 and figures["parent"] <= floor:
        return (
            f"the parent agrees with the labels on {figures['parent']:.2f}% of {total} held-out samples "
            f"({target}), no better than {'chance' if policy.min_parent_agreement is None else 'the policy'}"
            f" ({floor:.2f}%)"
        )
    top = max(range(len(label_counts)), key=lambda c: label_counts[c])
    share = label_counts[top] / total
    parent_share = parent_counts[top] / max(1, sum(parent_counts))
    if share > policy.max_label_share and parent_share < share / 2:
        name = labels[top] if top < len(labels) else str(top)
        return (
            f"{label_counts[top]} of {total} held-out labels ({100 * share:.0f}%) are class {name!r}, "
            f"where the parent predicts {name!r} for {100 * parent_share:.0f}% of the same inputs"
        )
    return None


def decide(
    evaluation: dict[str, Any],
    policy: rs.EvaluationPolicy,
    *,
    model: str,
    labels: list[str],
    identical_to: int | None,
    new_labels: bool,
) -> tuple[bool, str]:
    """(accepted, the one-line reason) for a candidate with these held-out figures (see the module doc)."""
    figures = _figures_text(evaluation)
    if identical_to is not None:
        return False, (
            f"rejected: identical to v{identical_to} (the same model file; {figures}); "
            "hint: the entry point returned its input unchanged, or trained on the same data again"
        )
    problem = label_problem(evaluation, policy, labels)
    if problem is not None:
        hint = LABELS_HINT.replace("MODEL", model)
        return False, f"rejected: the labels look wrong: {problem}; hint: {hint}"
    if not evaluation or any(
        f["candidate"] < f["parent"] - policy.tolerance_points for f in evaluation.values()
    ):
        return False, f"rejected: worse than its parent on the held-out samples ({figures})"
    if not new_labels and all(f["candidate"] <= f["parent"] for f in evaluation.values()):
        return False, (
            f"rejected: no better than its parent ({figures}) and no new labels since the last job's data; "
            f"hint: label more samples (edgectl retrain samples {model} --unlabeled --export DIR)"
        )
    return True, f"accepted: at least as good as its parent ({figures})"
