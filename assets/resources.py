"""Dagster resources: where the lake is and which dataset to read."""


import contextlib
import os
from pathlib import Path

import dagster as dg

from pipeline.errors import MELUserError
from pipeline.lake import Lake


class LakeResource(dg.ConfigurableResource):
    """The storage root. Empty means ``$MEL_HOME``, else ``./.mel``."""

    root: str = ""

    def lake(self) -> Lake:
        return Lake(self.root or None)


class DatasetResource(dg.ConfigurableResource):
    """The MIMIC-layout dataset to ingest.

    Empty means ``$MEL_DATASET_DIR``, else the bundled demo dataset, generated
    deterministically into the lake on first use.
    """

    dataset_dir: str = ""

    def configured_dir(self) -> str:
        return self.dataset_dir or os.environ.get("MEL_DATASET_DIR", "")

    def is_demo(self) -> bool:
        return not self.configured_dir()

    def locate(self, lake: Lake, log=None) -> Path:
        if not self.is_demo():
            return Path(self.configured_dir())
        from pipeline.demo import ensure_demo_dataset

        if log is not None:
            log.info(f"No dataset configured (MEL_DATASET_DIR unset): using the demo dataset in {lake.demo_dataset_dir}.")
        return ensure_demo_dataset(lake.demo_dataset_dir)


@contextlib.contextmanager
def user_errors():
    """Turn a MELUserError into a Dagster failure that shows the sentence, not a stack."""
    try:
        yield
    except MELUserError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


def failure_sentence(failure) -> str:
    """What a failed step (its `StepFailureData`) says: the sentence `user_errors` gave it, else its error's
    last line."""
    message = failure.user_failure_data.description if failure.user_failure_data else None
    return message or failure.error.message.strip().splitlines()[-1]
