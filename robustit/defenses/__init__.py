"""Backdoor defenses on one plug-in interface (DESIGN.md section 5); importing this package
imports every module in it, so that each
defense module registers itself in `DEFENSES`."""
from robustit.defenses.aar import AAR
from robustit.defenses.base import (
    DEFENSES,
    Defense,
    DefenseBatch,
    DefenseConfig,
    Flag,
    TuningState,
    View,
    build_defense,
    register_defense,
    strip_poison_info,
)
from robustit.defenses.byorn import BYORn
from robustit.defenses.composite import Composite, RobustIT
from robustit.defenses.idr import IDR
from robustit.registry import import_modules

import_modules(__name__, __path__)

__all__ = [
    "AAR",
    "BYORn",
    "Composite",
    "DEFENSES",
    "Defense",
    "DefenseBatch",
    "DefenseConfig",
    "Flag",
    "IDR",
    "RobustIT",
    "TuningState",
    "View",
    "build_defense",
    "register_defense",
    "strip_poison_info",
]
