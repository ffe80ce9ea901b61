"""Intervention targets for graph work: a supernode edits several targets together.

Why here: probe prompting and attribution graphs group features into supernodes and test them by
intervention; the engine's interventions only need to know that a target with ``members`` is a
group (each member gets the same edit), not what the group means. (Probe prompting's result
lists its supernodes as ``classify.Supernode``: a label and (layer, feature) members, no hooks.)
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.engine.interventions import Edit, as_target


@dataclass(frozen=True)
class Supernode:
    """Several targets edited together (e.g. the features of a probe-prompting supernode): any
    mix of intervention targets, engine nodes and node labels ('L3.H5', 'L2.N17@4')."""

    members: tuple
    """The targets; each gets the intervention's edit."""
    name: str = "supernode"
    """A label for reports."""

    def hooks(self, model, edit: Edit, positions):
        return [h for m in self.members for h in as_target(m).hooks(model, edit, positions)]
