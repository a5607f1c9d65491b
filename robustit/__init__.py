"""robustit: backdoor-robust instruction tuning of vision-language models."""

__version__ = "0.1.0"
