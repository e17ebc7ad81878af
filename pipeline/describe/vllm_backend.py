"""The vLLM backend: offline batch inference (`vllm.LLM`), scoring options like transformers.

Each option becomes one token sequence (prompt + option, the token ids of
`prompts.encode_prompt`, from the same HF folder the transformers backend loads) and
the whole batch goes to one `LLM.generate` call with `prompt_logprobs=0`, which
returns the log-probability of every prompt token; the option's tokens are summed.
So both backends score the same sequences the same way, and `scoring.choose` picks
from the offered options only: nothing outside them can be produced. (Structured
outputs with a `choice` list would constrain generation too, but give the
probability of the first diverging token, not of the whole option.)

vLLM is an optional GPU extra and is imported only when the engine starts. Its pins
(torch, transformers) may clash with the project's, so it can also run in another
virtual environment: set `vllm_python` to that environment's interpreter and the
engine runs in a worker process started once per run (this module's `__main__`),
fed one batch per line of JSON on stdin, answering one line per batch on stdout:

    python -m pipeline.describe.vllm_backend --model HF_FOLDER < batches.jsonl > scores.jsonl

Each input line is a JSON list of prompts (`Prompt.to_json`); each output line is the
list of their scores and choices. The worker imports neither pyarrow nor duckdb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.describe.backends import ChoiceBackend, first_line
from pipeline.describe.prompts import EncodedPrompt, Prompt
from pipeline.describe.scoring import (
    OptionLikelihoods,
    OptionScores,
    choose,
    score_prompts,
)
from pipeline.errors import MELUserError

READY = "ready"


class VLLMEngine:
    """A `vllm.LLM` over one HF folder, and the tokenizer the prompts are encoded with."""

    def __init__(self, model: str, *, dtype: str = "auto", tensor_parallel_size: int = 1,
                 max_model_len: int = 2048, gpu_memory_utilization: float = 0.85, enforce_eager: bool = False):
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.llm = LLM(model=model, tokenizer=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                       enforce_eager=enforce_eager, seed=0)
        self.max_model_len = max_model_len
        self.baseline_memo = {}

    def score(self, prompts: list[Prompt]) -> list[OptionScores]:
        return score_prompts(prompts, self.tokenizer, self.score_encoded, self.baseline_memo)

    def score_encoded(self, prompts: list[EncodedPrompt]) -> list[OptionLikelihoods]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sequences = [p.prefix_ids + ids for p in prompts for ids in p.option_ids]
        too_long = max(len(s) for s in sequences)
        if too_long > self.max_model_len:
            raise ValueError(f"a prompt with its option is {too_long} tokens, over max_model_len {self.max_model_len}")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        # one engine call for the whole batch; the engine schedules and batches it itself
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
        results, at = [], 0
        for p in prompts:
            sums, counts = [], []
            for ids in p.option_ids:
                output = outputs[at]
                at += 1
                positions = range(len(output.prompt_token_ids) - len(ids), len(output.prompt_token_ids))
                sums.append(sum(output.prompt_logprobs[i][output.prompt_token_ids[i]].logprob for i in positions))
                counts.append(len(ids))
            results.append(OptionLikelihoods(sums, counts))
        return results


class VLLMBackend(ChoiceBackend):
    name = "vllm"

    def load(self) -> None:
        folder = str(self.model_folder()) if self.location.files else str(self.location.path)
        engine_settings = dict(dtype=self.config.dtype, tensor_parallel_size=self.config.tensor_parallel_size,
                               max_model_len=self.config.max_model_len,
                               gpu_memory_utilization=self.config.gpu_memory_utilization,
                               enforce_eager=self.config.vllm_enforce_eager)
        try:
            if self.config.vllm_python:
                self.engine = WorkerProcess(self.config.vllm_python, folder, **engine_settings)
            else:
                self.engine = VLLMEngine(folder, **engine_settings)
        except ImportError:
            raise MELUserError(
                f"The vllm backend could not load model {self.location.display}: vLLM is not installed "
                "here; install the `gpu` extra or set `vllm_python` to a Python that has it."
            ) from None
        except Exception as error:
            raise MELUserError(
                f"The vllm backend could not load model {self.location.display}: {first_line(error)}."
            ) from None

    def _score(self, prompts: list[Prompt]) -> list[OptionScores]:
        return self.engine.score(prompts)

    def close(self) -> None:
        engine = self.__dict__.pop("engine", None)
        if isinstance(engine, WorkerProcess):
            engine.close()
        self.loaded = False


class WorkerProcess:
    """The engine in another interpreter (this module's `__main__`), started once, fed batch by batch."""

    def __init__(self, python: str, model: str, **engine_settings):
        if not Path(python).is_file():
            raise FileNotFoundError(f"no Python interpreter at {python} (setting `vllm_python`)")
        arguments = [python, "-m", "pipeline.describe.vllm_backend", "--model", model]
        for name, value in engine_settings.items():
            if isinstance(value, bool):
                arguments += [f"--{name.replace('_', '-')}"] if value else []
            else:
                arguments += [f"--{name.replace('_', '-')}", str(value)]
        repo_root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
        self.log = tempfile.TemporaryFile(mode="w+")  # the engine's chatter; its tail explains a failure
        self.process = subprocess.Popen(arguments, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, cwd=repo_root, env=env)
        self._read_line()  # the engine is up

    def score(self, prompts: list[Prompt]) -> list[OptionScores]:
        self.process.stdin.write(json.dumps([p.to_json() for p in prompts]) + "\n")
        self.process.stdin.flush()
        return [OptionScores(r["logprob_sums"], r["baseline_sums"], r["token_counts"]) for r in self._read_line()]

    def _read_line(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"the vLLM worker exited with code {self.process.returncode}: {self._log_tail()}")
        message = json.loads(line)
        if isinstance(message, dict) and "error" in message:
            raise RuntimeError(message["error"])
        return message

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def serve(engine: VLLMEngine, lines, reply) -> None:
    """One JSON list of prompts per input line -> one JSON list of scores and choices per output line."""
    for line in lines:
        if not line.strip():
            continue
        prompts = [Prompt.from_json(item) for item in json.loads(line)]
        results = []
        for score in engine.score(prompts):
            choice = choose(score)
            results.append({"logprob_sums": score.logprob_sums, "baseline_sums": score.baseline_sums,
                            "token_counts": score.token_counts,
                            "choice": choice.index, "probabilities": choice.probabilities})
        reply(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.describe.vllm_backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF model folder (export a GGUF with backends.export_hf_folder)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs: faster start")
    parser.add_argument("--input", type=Path, help="batches, one JSON list of prompts per line (default: stdin)")
    parser.add_argument("--output", type=Path, help="one JSON list of results per batch (default: stdout)")
    args = parser.parse_args(argv)
    # Results own stdout; everything else printed here or by engine processes goes to stderr.
    out = open(args.output, "w") if args.output else os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(message) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        engine = VLLMEngine(args.model, dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
                            max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                            enforce_eager=args.enforce_eager)
    except Exception as error:
        reply({"error": f"{type(error).__name__}: {error}".splitlines()[0]})
        return 1
    reply({READY: True})
    lines = open(args.input) if args.input else sys.stdin
    try:
        serve(engine, lines, reply)
    except Exception as error:
        reply({"error": f"{type(error).__name__}: {error}".splitlines()[0]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
