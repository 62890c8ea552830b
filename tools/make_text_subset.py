"""Write a GPT-2 subset file (the gpt2 tokenizer's `subset_file` option) for a corpus.

    python tools/make_text_subset.py --world worlds/shapes --out subset.json

The corpus: every region phrase of the given shapes worlds (or Visual Genome style
region_descriptions_*.json files), every category name and synonym of the shapes world,
its colour words, and the prompt texts of the built-in tasks. The shipped
`builtin:shapes` subset (unicl/assets/gpt2_subsets/shapes.json) was written by

    python tools/make_text_subset.py --world worlds/shapes \
        --out unicl/assets/gpt2_subsets/shapes.json

from the default world (seed 0, 2000 + 500 images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def corpus(worlds: list[Path]) -> list[str]:
    from unicl.tasks.world_shapes import CATEGORIES, COLOURS

    texts = ["Category:", ". Bboxes:", ". Caption:", "left", "right", " left", " right"]
    for category in CATEGORIES:
        for word in (category.name, *category.synonyms):
            texts += [word, f" {word}"]
    for colour in COLOURS:
        texts += [colour, f" {colour}"]
    for world in worlds:
        for path in sorted((world / "annotations").glob("region_descriptions_*.json")):
            for entry in json.loads(path.read_text()):
                texts += [f" {r['phrase']}" for r in entry.get("regions", [])]
    return texts


def main() -> None:
    from unicl.tokenizers.gpt2 import GPT2Tokenizer, write_subset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    texts = corpus(args.world)
    path = write_subset(texts, args.out)
    subset = GPT2Tokenizer(subset_file=str(path))
    full = GPT2Tokenizer()
    same = all(
        subset.gpt2_ids[subset.encode(t).numpy()].tolist() == full.encode(t).tolist() for t in texts
    )
    print(f"{len(texts)} texts -> {subset.vocab_size} ids in {path}; encodes as GPT-2: {same}")


if __name__ == "__main__":
    main()
