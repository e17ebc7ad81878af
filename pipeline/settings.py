"""How a stage declares its settings: one frozen dataclass whose fields carry their documentation.

The Dagster resources are generated from these dataclasses (`assets.resources.settings_resource`), so a setting
is declared, documented and validated once, here in `pipeline/`. A bad value raises `SettingError` (through
`refuse`), whose message starts with the setting's name; `assets/` prefixes it with the resource that holds it
("TrainingResource.gate_mode 'x' is not one of topk, reference.").
"""

from __future__ import annotations

import dataclasses
from typing import NoReturn

from pipeline.errors import MELUserError


def setting(default=dataclasses.MISSING, doc: str = "", *, default_factory=dataclasses.MISSING):
    """A settings field with its one-line documentation (shown in the Dagster UI's resource config)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"doc": doc})


def doc_of(field: dataclasses.Field) -> str:
    return field.metadata.get("doc", "")


class SettingError(MELUserError):
    """A setting holds a value the stage cannot use; `message` starts with the setting's name."""

    def __init__(self, settings: type, message: str):
        super().__init__(message)
        self.settings = settings
        self.message = message


def refuse(settings, message: str) -> NoReturn:
    """Raise the SettingError of `settings` (a settings dataclass, or one of its values); `message` starts with
    the setting's name."""
    raise SettingError(settings if isinstance(settings, type) else type(settings), message)
