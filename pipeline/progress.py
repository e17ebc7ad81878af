"""Progress bars in the run log: tqdm writes its refreshed lines to a logger (the Dagster log) instead of a terminal."""

from __future__ import annotations

import io


class LogStream(io.StringIO):
    """A file for tqdm that sends each refreshed progress line to `logger.info`."""

    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def write(self, text: str) -> int:
        line = text.strip("\r\n ")
        if line:
            self.logger.info(line)
        return len(text)
