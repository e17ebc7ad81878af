"""Description-aware mention enhancement: an LLM picks each mention's WikiData description.

For every mention, the candidate items of `wikidata_candidates` that have a description
become options, with "none of these" always added; an LLM scores each option as the
reply to "What is <mention> in this sentence?" and the best-supported one is kept
(`mention_descriptions` table). Downstream, the encoders read
"mention [SEP] sentence [SEP] description".

Modules:
* `prompts`: the one prompt builder and its encoding into token ids (both backends);
* `scoring`: the choice rule (pointwise mutual information of option and sentence);
* `backends`: the backend interface, its settings (`LLMSettings`), model location, GGUF export;
* `transformers_backend`, `vllm_backend`: the two backends (vLLM imported lazily);
* `cache`: the DuckDB cache of choices; `select`: the stage; `measure`: accuracy vs baselines.

Nothing here imports torch, transformers or vLLM until a model is actually needed.
"""
