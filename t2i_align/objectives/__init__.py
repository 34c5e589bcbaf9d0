"""Preference objectives: pure functions of per-sample denoising errors.

Each method module declares NEEDS_REFERENCE (run the frozen reference model) and
USES_REJECTED (run the model on the rejected image at all). `get_objective(name)` returns
(loss_fn, needs_reference, uses_rejected); loss_fn takes model_err_w, model_err_l, ref_err_w,
ref_err_l as keywords where it needs them, plus the method's hyper-parameters.
"""

from dataclasses import dataclass
from typing import Callable

from t2i_align.objectives import dpo, mapo, sft
from t2i_align.errors import InputError


@dataclass(frozen=True)
class Objective:
    name: str
    loss_fn: Callable
    needs_reference: bool
    uses_rejected: bool


OBJECTIVES = {
    "dpo": Objective("dpo", dpo.dpo_loss, dpo.NEEDS_REFERENCE, dpo.USES_REJECTED),
    "mapo": Objective("mapo", mapo.mapo_loss, mapo.NEEDS_REFERENCE, mapo.USES_REJECTED),
    "sft": Objective("sft", sft.sft_loss, sft.NEEDS_REFERENCE, sft.USES_REJECTED),
}


def get_objective(name: str) -> Objective:
    """Look up an objective by name; unknown names fail with the list of known ones."""
    if name not in OBJECTIVES:
        raise InputError(f"unknown method.objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def compute_objective(objective: Objective, hparams: dict, model_err_w, model_err_l=None,
                      ref_err_w=None, ref_err_l=None):
    """Call the objective's loss with the errors it uses and its hyper-parameters."""
    errors = {"model_err_w": model_err_w}
    if objective.uses_rejected:
        errors["model_err_l"] = model_err_l
    if objective.needs_reference:
        errors["ref_err_w"] = ref_err_w
        errors["ref_err_l"] = ref_err_l
    return objective.loss_fn(**errors, **hparams)
