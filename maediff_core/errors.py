"""The errors a user can fix: each names what is wrong and how to go on. The command line answers
every one of them with its message and exit code 2; anything else is a defect (exit code 1).

Standard library only: every stage raises these, the training path where SimpleITK is absent and
the Slicer module in Slicer's own process included.
"""

from __future__ import annotations


class MaediffError(ValueError):
    """Something given to the project that cannot be used, with the reason in the message. A
    ValueError, so that code which validates with ValueError (dataclass checks) is answered alike."""


class InputError(MaediffError):
    """An input volume, mask, atlas or data set that cannot be used."""


class CardError(MaediffError):
    """A model card, its weights, a configuration, a checkpoint or a run folder that cannot be used
    as asked."""


class OptionError(MaediffError):
    """An option or setting that cannot hold (for this model, this run or this machine)."""
