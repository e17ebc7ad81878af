"""Deterministic demo dataset for the mmoe-mel pipeline, in the MIMIC layout (WikiMEL style).

`generate_demo_dataset(out_dir)` writes ~300 KB entities, ~900 mentions in
train/dev/test, their images, a WikiData JSON dump fixture, and `truth.jsonl`
/ `README.md` saying what every mention refers to and why it is hard.
`ensure_demo_dataset(out_dir)` reuses a complete dataset (its `.complete`
marker matches the generator version and parameters) and regenerates otherwise.

Why it is hard, in the ways the MMoE method targets:

* Names are shared by 2-6 KB entities, sometimes of the same kind (two
  footballers called Jordan).  Text then narrows the candidates to a kind but
  not to one entity; a description detail (nationality, region, decade, genre)
  that the sentence may hint at, or the image, has to decide.
* Sentences use context phrases that relate to the WikiData description only
  loosely ("the rebounds" vs "basketball player"), with generic padding and
  occasional misleading phrases from a namesake's kind.
* Each entity has a drawn visual signature (shape, colours, texture, accent);
  same-kind namesakes are near twins, mention images are rotated, cropped,
  colour-shifted, noisy views, and ~15% of mentions have no image.
* ~2% of mentions are nil (the referent is in the dump, not the KB), some test
  entities never occur in train, and a few files are broken on purpose.

Modules: `vocabulary` (kinds and words), `visuals` (signatures and drawing), `world` (the pure, seeded world
model: `world_types` its data types, `entities` and `mentions` its parts), `writer` (the MIMIC files, the dump,
the images), `truth` (what every mention refers to and why), `readme` (statistics and the README), `dataset`
(atomic generation and the completion marker). `python -m synthetic.demo OUT_DIR` runs it.
"""

from .dataset import (
    DEMO_GENERATOR_VERSION,
    DemoSummary,
    ensure_demo_dataset,
    generate_demo_dataset,
    is_complete,
)

__all__ = ["DEMO_GENERATOR_VERSION", "DemoSummary", "ensure_demo_dataset", "generate_demo_dataset", "is_complete"]
