"""Backdoor attacks on instruction-tuning data (DESIGN.md section 4); importing this package
imports every module in it, so that each
attack module registers itself in `ATTACKS`."""
from robustit.attacks.additive import AdditiveAttack
from robustit.attacks.badnets import BadNets
from robustit.attacks.base import ATTACKS, DEFAULT_TARGET, Attack, AttackConfig, build_attack, register_attack
from robustit.attacks.blended import Blended
from robustit.attacks.dataset import PoisonedDataset, TriggeredView
from robustit.attacks.ftrojan import FTrojan
from robustit.attacks.patch import CORNERS, PatchAttack
from robustit.attacks.sig import SIG
from robustit.attacks.ssba import SSBA
from robustit.attacks.trojvqa import TrojVQA
from robustit.attacks.vltrojan import VLTrojan
from robustit.registry import import_modules

import_modules(__name__, __path__)

__all__ = [
    "ATTACKS",
    "CORNERS",
    "DEFAULT_TARGET",
    "AdditiveAttack",
    "Attack",
    "AttackConfig",
    "BadNets",
    "Blended",
    "FTrojan",
    "PatchAttack",
    "PoisonedDataset",
    "SIG",
    "SSBA",
    "TriggeredView",
    "TrojVQA",
    "VLTrojan",
    "build_attack",
    "register_attack",
]
