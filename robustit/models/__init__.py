"""Model families behind one interface, built by name from a spec; importing this package
imports every module in it, so each family registers itself."""
from robustit.registry import import_modules

from .base import Demonstration, LMOutput, VisionLanguageModel
from .prompt import IGNORE_INDEX, EncodedBatch, PromptFormat
from .registry import MODEL_FAMILIES, build_model, register_family

import_modules(__name__, __path__)

__all__ = [
    "Demonstration", "EncodedBatch", "IGNORE_INDEX", "LMOutput", "MODEL_FAMILIES", "PromptFormat",
    "VisionLanguageModel", "build_model", "register_family",
]
