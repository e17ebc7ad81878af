"""Errors that reach the user as one clear sentence instead of a traceback."""


class MELUserError(Exception):
    """A problem with the user's data or settings that the user can fix.

    The message is a complete sentence naming the path or setting at fault;
    the Dagster layer shows it as the run's failure reason without a stack trace.
    """
