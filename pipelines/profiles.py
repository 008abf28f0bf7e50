"""How a study's profile is chosen and applied, and which MLflow experiment it writes: the one definition
that both the spec loader (pipelines.spec) and the reports (which must not import model code) use."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

REPORT_LAYOUTS = ("table5", "table6", "table7", "figure5")  # what a study's `report:` may name


def choose_profile(raw: Dict[str, Any], profile: Optional[str] = None) -> Optional[str]:
    """The profile asked for, else the study's default_profile, else cpu, else the first by name."""
    chosen = profile or raw.get("default_profile")
    profiles = raw.get("profiles")
    if chosen is None and isinstance(profiles, dict) and profiles:
        chosen = "cpu" if "cpu" in profiles else sorted(profiles)[0]
    return chosen


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """A profile's overrides on the study: mappings merge deeply, except that a profile replaces whole
    grid axes, an empty mapping clears (``optim: {}``: the recipe's own values), and a profile that names
    another ``dataset`` replaces ``data`` (data options belong to their dataset); everything else is replaced."""
    out = copy.deepcopy(base)
    if "dataset" in over and over["dataset"] != out.get("dataset"):
        out.pop("data", None)
    for k, v in over.items():
        if isinstance(v, dict) and not v:
            out[k] = {}
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k != "grid":
            out[k] = merge(out[k], v)
        elif k == "grid" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def experiment_name(name: str, spec: Dict[str, Any], chosen: Optional[str]) -> str:
    """The study's MLflow experiment: `experiment:` if the (merged) spec sets it, else NAME-PROFILE."""
    return spec.get("experiment") or (f"{name}-{chosen}" if chosen else name)
