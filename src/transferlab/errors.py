"""Errors a user can act on.

A `UserError` carries the problem and the fix; the CLI prints it without a traceback and
exits with status 2. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or environment: the message names the problem and how to fix it."""


class ExperimentFailed(Exception):
    """An experiment cannot finish (NaN loss, out of memory); the study goes on."""


class ClaimLost(Exception):
    """Another runner took over (or someone reset) this runner's claim on an experiment: the
    store refuses its writes, and the runner stops that experiment without marking it failed."""


class WeightsUnavailable(UserError):
    """Pretrained weights cannot be fetched here (no internet, nothing cached): the experiment
    ends as skipped, with the reason and the command that fetches them, not as a failure."""


class DamagedFile(UserError):
    """A saved file that cannot be read back (truncated, overwritten, not a tensor file at all).
    A cache or checkpoint of ours is set aside and made again; any other file is an error."""
