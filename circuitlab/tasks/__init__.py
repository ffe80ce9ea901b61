"""Tasks: clean/corrupt datasets with answers and metrics."""

from circuitlab.tasks.task import Task, from_pairs
from circuitlab.tasks import metrics

__all__ = ["Task", "from_pairs", "metrics"]
