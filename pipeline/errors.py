"""Errors a user can fix. The CLI prints them as one line on stderr and exits 2 (no traceback)."""


class UserError(Exception):
    """Bad input: a recipe, a path, a missing artifact. Message is the whole story, one line."""

    exit_code = 2


class StageFailed(Exception):
    """A stage crashed. The CLI exits 1, naming the stage and its log."""

    exit_code = 1

    def __init__(self, stage: str, log_path: str, cause: str):
        super().__init__(f"stage '{stage}' failed: {cause} (log: {log_path})")
        self.stage, self.log_path = stage, log_path


class BadValue(ValueError):
    """A refused recipe value whose message already names it: the one-line recipe error adds no ", got ..."."""
