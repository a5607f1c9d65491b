"""Multi-turn conversations as samples: the tuned turn is an assistant answer, and the turns
before it become context in the instruction.

For earlier (question, answer) turns (q_1, a_1) .. (q_k, a_k) and the question q of the tuned
turn, the instruction is

    "User: q_1\nAssistant: a_1\n" ... "User: q_k\nAssistant: a_k\n" + q

(just q for a first turn), so one chat-template turn carries the whole history and the loss
covers the tuned answer alone. A text trigger is then appended to q or prepended to the first
context line.
"""
from __future__ import annotations

from typing import Sequence

CONTEXT_TURN = "User: {question}\nAssistant: {answer}\n"


def context_instruction(earlier: Sequence[tuple[str, str]], question: str) -> str:
    """The instruction of a turn asking `question` after the `earlier` (question, answer) turns."""
    return "".join(CONTEXT_TURN.format(question=q, answer=a) for q, a in earlier) + question
