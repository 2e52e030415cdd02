"""The plans of the command line, in the order they are tried: the first whose options a new run selects trains it.

A plan is one way of reading text (:mod:`xseq.lm.plan_lines`, :mod:`xseq.lm.plan_stream`): its options, how it
reads its corpus and builds or resumes its trainer (on the one :class:`~xseq.lm.trainer.Trainer`, with its own data
class), what it checks against the machine, how it prints its plan, scores a file and describes a saved run. The
command line (:mod:`xseq.lm.cli`) only calls plans: a new plan is a module of its own and one entry here.
"""

from __future__ import annotations

from .plan_lines import LinePlan
from .plan_pairs import PairPlan
from .plan_stream import StreamPlan

# The line plan, last, takes every run no other plan selects.
PLANS = (PairPlan(), StreamPlan(), LinePlan())
