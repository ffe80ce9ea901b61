"""Tasks: clean/corrupt datasets with answers and metrics."""

from circuitlab.tasks import metrics
from circuitlab.tasks.bundled import bundled, capitals, counterfact, factual, greater_than, induction, ioi
from circuitlab.tasks.task import Task, from_pairs

__all__ = ["Task", "from_pairs", "metrics", "ioi", "capitals", "greater_than", "induction", "factual",
           "counterfact", "bundled"]
