"""The arms of an introspection run: for the paper's trial and for every control, what is injected,
where, what the model is asked, which rate is read off the replies and which arm is its chance.

The paper's question with its controls (Lindsey 2025):
  injected   the concept v                      (the treatment)
  none       nothing                            (false positives; one arm for a whole sweep)
  random     a random direction of v's norm     (does any push make it say "yes"?)
  negated    -v
The confounds the open reproductions found (METHODS section 2), each a selectable control:
  generation_only  v on the generated tokens only, not over the prompt (the paper's window
                   includes the question; on Qwen2.5 the effect came from that part);
  yes_no           v over the window of an unrelated yes/no question whose answer is no ("Is the
                   Earth flat?"), against the same questions with nothing injected (yes_no_none):
                   does injection alone raise "yes"?
  mismatch         the model is asked about concept A ("Do you detect an injected thought about
                   A?") while A is injected (named) and while another concept B of the same norm is
                   injected (mismatch): a model that notices says yes more often to the first;
                   a model that only leaks the concept or says "yes" to any push does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CONDITIONS = ("injected", "none", "random", "negated")
CONTROLS = ("none", "random", "negated")
CONFOUNDS = ("generation_only", "yes_no", "mismatch")
ALL_CONTROLS = CONTROLS + CONFOUNDS

MIN_NONE_TRIALS = 100  # the floor of trials of an arm without injection (the paper's 0/100)

QUESTIONS = ("detect", "yes_no", "about")
VECTORS = ("concept", "none", "random", "negated", "partner")
MEASURES = ("detection", "yes")

# Unrelated questions whose true answer is "no" (asked in the trial's place, "Trial 1: ..."),
# of one token length in SmolLM2's tokenizer, so their trials share a batch.
YES_NO_QUESTIONS: tuple[str, ...] = (
    "Is the Earth flat?",
    "Is the sun cold?",
    "Do dogs have wings?",
    "Is London in France?",
    "Do cows lay eggs?",
)
YES_NO_SUFFIX = " Answer yes or no."


@dataclass(frozen=True)
class Arm:
    """One arm: `name` is the trial table's `condition`. question: "detect" (the paper's), "yes_no"
    (an unrelated question) or "about" (asked about the setting's concept by name). vector: what
    is added ("partner" is another concept rescaled to the concept's norm). positions: None for
    the run's own, or a mode that overrides it. measure: the rate read off the replies
    (detection = coherent and affirmative; yes = opens with yes). reference: the arm whose rate
    is this one's chance. shared: nothing is injected, so one arm serves every setting."""

    name: str
    question: str
    vector: str
    measure: str
    reference: str | None
    positions: str | None = None
    shared: bool = False

    def __post_init__(self) -> None:
        if self.question not in QUESTIONS or self.vector not in VECTORS \
                or self.measure not in MEASURES:
            raise ValueError(f"Arm {self.name!r}: unknown question, vector or measure.")
        if self.shared != (self.vector == "none"):
            raise ValueError(f"Arm {self.name!r}: exactly the arms without injection are shared.")


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("injected", "detect", "concept", "detection", "none"),
    Arm("none", "detect", "none", "detection", None, shared=True),
    Arm("random", "detect", "random", "detection", "none"),
    Arm("negated", "detect", "negated", "detection", "none"),
    Arm("generation_only", "detect", "concept", "detection", "none", positions="generated"),
    Arm("yes_no", "yes_no", "concept", "yes", "yes_no_none"),
    Arm("yes_no_none", "yes_no", "none", "yes", None, shared=True),
    Arm("named", "about", "concept", "detection", "mismatch"),
    Arm("mismatch", "about", "partner", "detection", None),
)}
# The arms each selectable control adds to the injected one.
CONTROL_ARMS: dict[str, tuple[str, ...]] = {
    "none": ("none",), "random": ("random",), "negated": ("negated",),
    "generation_only": ("generation_only",), "yes_no": ("yes_no", "yes_no_none"),
    "mismatch": ("named", "mismatch"),
}


def check_controls(controls: Sequence[str]) -> tuple[str, ...]:
    """The controls as a tuple; ValueError names an unknown one."""
    unknown = [c for c in controls if c not in ALL_CONTROLS]
    if unknown:
        raise ValueError(f"Unknown control {unknown[0]!r}; choose from "
                         f"{', '.join(ALL_CONTROLS)}.")
    return tuple(controls)


def arms_for(controls: Sequence[str]) -> list[Arm]:
    """The injected arm and the arms of `controls`, in ALL_CONTROLS order."""
    chosen = set(check_controls(controls))
    names = ["injected", *[a for c in ALL_CONTROLS if c in chosen for a in CONTROL_ARMS[c]]]
    return [ARMS[name] for name in names]


def yes_no_question(trial: int) -> str:
    """The unrelated question of trial `trial` (the same in the injected and the plain arm, so the
    two are paired): the questions in turn."""
    return YES_NO_QUESTIONS[trial % len(YES_NO_QUESTIONS)] + YES_NO_SUFFIX
