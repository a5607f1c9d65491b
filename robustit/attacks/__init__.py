"""Backdoor attacks on instruction-tuning data (DESIGN.md section 4); importing this package
registers every attack in `ATTACKS`."""
from robustit.attacks.base import ATTACKS, DEFAULT_TARGET, Attack, AttackConfig, build_attack, register_attack
from robustit.attacks.badnets import BadNets
from robustit.attacks.dataset import PoisonedDataset, TriggeredView
from robustit.attacks.patch import CORNERS, PatchAttack

__all__ = [
    "ATTACKS",
    "CORNERS",
    "DEFAULT_TARGET",
    "Attack",
    "AttackConfig",
    "BadNets",
    "PatchAttack",
    "PoisonedDataset",
    "TriggeredView",
    "build_attack",
    "register_attack",
]
