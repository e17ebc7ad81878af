"""Dagster resources: where the lake is, which dataset to read, and the stage settings as resources.

A stage's settings are declared once, as a frozen dataclass in `pipeline/` (`pipeline.settings`);
`settings_resource` turns one into a Dagster resource with the same fields, defaults and descriptions, and
`user_errors` names the resource in front of a bad setting's message.
"""


import contextlib
import dataclasses
import os
import typing
from pathlib import Path

import dagster as dg
from pydantic import Field

from pipeline.errors import MELUserError
from pipeline.lake import Lake
from pipeline.settings import SettingError, doc_of

_RESOURCE_OF_SETTINGS: dict[type, str] = {}  # settings dataclass -> the name of the resource built from it


class LakeResource(dg.ConfigurableResource):
    """The storage root, and which mention texts the mention features (and every stage after them) use."""

    root: str = Field(default="", description="The lake's folder; empty means $MEL_HOME, else ./.mel.")
    description_source: str = Field(default="auto", description="Mention descriptions: auto (LLM table when "
                                    "materialized, else the dataset's), llm, dataset or none. A source other than "
                                    "auto (an ablation) has a mention store of its own beside the main one, which "
                                    "the stages after the features then read.")

    def lake(self) -> Lake:
        return Lake(self.root or None, description_source=self.description_source)


_RESOURCE_OF_SETTINGS[Lake] = LakeResource.__name__  # the lake's description_source is a LakeResource setting


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
        from synthetic.demo import ensure_demo_dataset

        if log is not None:
            log.info(f"No dataset configured (MEL_DATASET_DIR unset): using the demo dataset in {lake.demo_dataset_dir}.")
        return ensure_demo_dataset(lake.demo_dataset_dir)


def settings_resource(settings_class: type, *, exclude: tuple[str, ...] = ()) -> type:
    """A resource class whose fields are those of `settings_class` (less `exclude`), with their defaults and
    documentation; its `settings()` builds the dataclass, which validates the values.

    Subclass it, with a docstring (`class TrainingResource(settings_resource(TrainingSettings)): ...`): the
    subclass's name is the one `user_errors` puts in front of its settings' errors. Tuple fields are lists in the
    resource (Dagster config has no tuples).
    """
    hints = typing.get_type_hints(settings_class)
    annotations, namespace, tuples = {}, {}, set()
    for field in dataclasses.fields(settings_class):
        if field.name in exclude:
            continue
        hint, default = hints[field.name], field.default
        if default is dataclasses.MISSING:
            default = field.default_factory()
        if typing.get_origin(hint) is tuple:
            hint, default = list[typing.get_args(hint)[0]], list(default)
            tuples.add(field.name)
        annotations[field.name] = hint
        namespace[field.name] = Field(default=default, description=doc_of(field) or None)

    def settings(self):
        values = {name: tuple(getattr(self, name)) if name in tuples else getattr(self, name)
                  for name in annotations}
        return settings_class(**values)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):  # the subclass is the resource users see: name it in errors
        super(generated, cls).__pydantic_init_subclass__(**kwargs)
        _RESOURCE_OF_SETTINGS[settings_class] = cls.__name__

    namespace.update(__annotations__=annotations, __module__=__name__, settings=settings,
                     __pydantic_init_subclass__=__pydantic_init_subclass__)
    generated = type(f"{settings_class.__name__}Fields", (dg.ConfigurableResource,), namespace)
    return generated


@contextlib.contextmanager
def user_errors():
    """Turn a MELUserError into a Dagster failure that shows the sentence, not a stack; a bad setting's message
    names the resource that holds it."""
    try:
        yield
    except SettingError as error:
        resource = _RESOURCE_OF_SETTINGS.get(error.settings, error.settings.__name__)
        raise dg.Failure(description=f"{resource}.{error.message}", allow_retries=False) from None
    except MELUserError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


def failure_sentence(failure) -> str:
    """What a failed step (its `StepFailureData`) says: the sentence `user_errors` gave it, else its error's
    last line."""
    message = failure.user_failure_data.description if failure.user_failure_data else None
    return message or failure.error.message.strip().splitlines()[-1]
