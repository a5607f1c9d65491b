"""Backdoor defenses on one plug-in interface (DESIGN.md section 5); importing this package
registers every defense in `DEFENSES`."""
from robustit.defenses.aar import AAR
from robustit.defenses.base import (
    DEFENSES,
    Defense,
    DefenseBatch,
    DefenseConfig,
    View,
    build_defense,
    register_defense,
    strip_poison_info,
)
from robustit.defenses.composite import Composite, RobustIT
from robustit.defenses.idr import IDR

__all__ = [
    "AAR",
    "Composite",
    "DEFENSES",
    "Defense",
    "DefenseBatch",
    "DefenseConfig",
    "IDR",
    "RobustIT",
    "View",
    "build_defense",
    "register_defense",
    "strip_poison_info",
]
