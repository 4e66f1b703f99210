"""A generated instruction-tuning set shaped like LLaVA-1.5's mixture (llava_v1_5_mix665k), for the SFT rows.

    .venv/bin/python benchmarks/instruct_mix.py --examples 64 --out /tmp/mix   # write mix.jsonl and the images

Real data cannot be downloaded here, so the set is generated: the words are random English words and the images are
synthetic-shapes scenes, but the mixture, the turns per conversation and the answer lengths follow LLaVA-1.5's data,
which is what decides how much a padded batch wastes. Sources (docs/benchmarks.md cites them too):

- The parts and their sizes: LLaVA-1.5, "Improved Baselines with Visual Instruction Tuning" (Liu et al., 2023,
  arXiv:2310.03744), Table 7: LLaVA 158K (58K conversation, 23K detail, 77K complex reasoning: LLaVA, arXiv:2304.08485,
  §3), ShareGPT 40K, VQAv2 83K, GQA 72K, OKVQA 9K, OCRVQA 80K, A-OKVQA 66K, TextCaps 22K, RefCOCO 48K, VG 86K.
- The formats, same paper (Table 7, §3.2, Appendix A.2): the QA pairs of one image merged into one conversation; short
  answers prompted with "Answer the question using a single word or phrase."; A-OKVQA as a multiple choice answered
  with a letter; TextCaps as one-sentence captions; RefCOCO/VG as region descriptions or boxes, fewer than 10 pairs;
  the LLaVA conversations multi-turn, detail and complex reasoning single-turn; ShareGPT text only, long.
- Turns and lengths that no paper states are our estimates from counts of the released JSON (third-party notes, not
  verified here): about 4.5 QA pairs per LLaVA conversation, about 5 per merged VQA conversation; mean answer lengths
  of about 290 characters (a LLaVA conversation turn), 610 (detail) and 740 (complex reasoning); a median answer of
  the whole mixture of 14 characters. They are marked "estimate" in :data:`PARTS`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
CAPTION = "Provide a one-sentence caption for the provided image."
REGION = "Provide a short description for this region: "
BOX = "Provide the bounding box coordinate of the region this sentence describes: "
DETAIL = "Describe the following image in detail."

WORDS = (
    "the a of and to in is it that with on for as are this at by from or an be there which image shows can see "
    "person people man woman child dog cat car bus train street road building tree sky water table room window "
    "wall door light red blue green yellow white black large small left right top bottom front behind near next "
    "side center background foreground standing sitting holding wearing looking walking playing several two three "
    "many some other each while because likely appears suggests scene picture area group day time view colour "
    "shape object item part surface open close bright dark old new long short round square wooden metal glass "
    "stone grass field park city kitchen food plate cup bottle chair bench sign book phone computer screen bag "
    "shirt hat umbrella bicycle motorcycle boat plane bird horse sheep cow elephant giraffe zebra pizza cake"
).split()


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, count)))


def sentence(rng: random.Random, count: int, end: str = ".") -> str:
    text = words(rng, count)
    return text[0].upper() + text[1:] + end


def lognormal_words(rng: random.Random, mean: float, low: int, high: int) -> int:
    """A word count with the given mean (σ = 0.5 on the log scale), kept within [low, high]."""
    return min(high, max(low, round(rng.lognormvariate(math.log(mean) - 0.125, 0.5))))


def box(rng: random.Random) -> str:
    x, y = rng.random() * 0.6, rng.random() * 0.6
    return f"[{x:.2f}, {y:.2f}, {x + 0.1 + rng.random() * 0.3:.2f}, {y + 0.1 + rng.random() * 0.3:.2f}]"


# each part: (QA pairs) -> [(question, answer), …]; the first question carries the image
def llava_conversation(rng: random.Random) -> list[tuple[str, str]]:  # estimate: ~4.5 pairs, ~50 words an answer
    return [
        (sentence(rng, rng.randint(6, 14), "?"), sentence(rng, lognormal_words(rng, 50, 5, 160)))
        for _ in range(rng.randint(2, 7))
    ]


def llava_detail(rng: random.Random) -> list[tuple[str, str]]:  # estimate: ~110 words
    return [(DETAIL, sentence(rng, lognormal_words(rng, 110, 50, 260)))]


def llava_complex(rng: random.Random) -> list[tuple[str, str]]:  # estimate: ~135 words
    return [(sentence(rng, rng.randint(10, 22), "?"), sentence(rng, lognormal_words(rng, 135, 50, 320)))]


def sharegpt(rng: random.Random) -> list[tuple[str, str]]:  # text only, long answers (estimate: 1-4 pairs)
    return [
        (sentence(rng, lognormal_words(rng, 30, 5, 150), "?"), sentence(rng, lognormal_words(rng, 150, 20, 500)))
        for _ in range(rng.randint(1, 4))
    ]


def merged_vqa(low: int, high: int) -> Callable[[random.Random], list[tuple[str, str]]]:
    """A merged VQA conversation: ``low``..``high`` short questions, the prompt after the first, 1-3 word answers."""

    def make(rng: random.Random) -> list[tuple[str, str]]:
        pairs = [
            (sentence(rng, rng.randint(4, 10), "?"), words(rng, rng.randint(1, 3)))
            for _ in range(rng.randint(low, high))
        ]
        pairs[0] = (f"{pairs[0][0]}\n{SHORT}", pairs[0][1])
        return pairs

    return make


def aokvqa(rng: random.Random) -> list[tuple[str, str]]:
    options = "\n".join(f"{letter}. {words(rng, rng.randint(1, 3))}" for letter in "ABCD")
    return [(f"{sentence(rng, rng.randint(6, 14), '?')}\n{options}\n{LETTER}", rng.choice("ABCD"))]


def textcaps(rng: random.Random) -> list[tuple[str, str]]:
    return [(CAPTION, sentence(rng, rng.randint(8, 20)))]


def regions(low: int, high: int) -> Callable[[random.Random], list[tuple[str, str]]]:
    """RefCOCO / VG: region descriptions and boxes, ``low``..``high`` pairs."""

    def make(rng: random.Random) -> list[tuple[str, str]]:
        pairs = []
        for _ in range(rng.randint(low, high)):
            phrase = words(rng, rng.randint(2, 6))
            pairs.append((REGION + box(rng), phrase) if rng.random() < 0.5 else (BOX + phrase, box(rng)))
        return pairs

    return make


@dataclass(frozen=True)
class Part:
    thousands: int  # its size in llava_v1_5_mix665k (Table 7)
    make: Callable[[random.Random], list[tuple[str, str]]]
    image: bool = True


PARTS = {
    "llava-conversation": Part(58, llava_conversation),
    "llava-detail": Part(23, llava_detail),
    "llava-complex": Part(77, llava_complex),
    "sharegpt": Part(40, sharegpt, image=False),
    "vqav2": Part(83, merged_vqa(1, 10)),  # estimate: ~5 pairs per image
    "gqa": Part(72, merged_vqa(3, 10)),  # estimate
    "okvqa": Part(9, merged_vqa(1, 1)),  # about one question per image
    "ocrvqa": Part(80, merged_vqa(1, 8)),  # estimate: ~5 pairs
    "a-okvqa": Part(66, aokvqa),
    "textcaps": Part(22, textcaps),
    "refcoco": Part(48, regions(2, 9)),  # fewer than 10 pairs a conversation
    "vg": Part(86, regions(4, 10)),  # up to 10 annotations an image
}


def conversation(pairs: list[tuple[str, str]], image: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn, (question, answer) in enumerate(pairs):
        content: list[dict[str, Any]] = [{"type": "text", "text": question}]
        if turn == 0 and image is not None:
            content.insert(0, {"type": "image", "path": image})
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return messages


def generate(count: int, out_dir: str | Path, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` records ({"messages": …, "part": name}) drawn from :data:`PARTS` in proportion to their sizes; the
    images (synthetic-shapes scenes, 224 px) are written into ``out_dir``."""
    from mmllm_sdk.default_plugins.datasets.synthetic import generate_examples

    rng = random.Random(seed)
    names = rng.choices(list(PARTS), weights=[part.thousands for part in PARTS.values()], k=count)
    params = {"task": "captions", "num_examples": count, "image_size": 224, "seed": seed, "out_dir": str(out_dir)}
    images = [item.example["messages"][0]["content"][0]["path"] for item in generate_examples(params)]
    records = []
    for index, name in enumerate(names):
        part = PARTS[name]
        records.append({"messages": conversation(part.make(rng), images[index] if part.image else None), "part": name})
    return records


def fit(records: list[dict[str, Any]], count_tokens: Callable[[list[dict[str, Any]]], int], limit: int) -> None:
    """Drop the last QA pairs of a conversation longer than ``limit`` tokens (LLaVA truncates ShareGPT at 2048)."""
    for record in records:
        while count_tokens(record["messages"]) > limit and len(record["messages"]) > 2:
            del record["messages"][-2:]
        if count_tokens(record["messages"]) > limit:  # one pair too long: a shorter answer, whole words
            answer = record["messages"][1]["content"].split()
            while count_tokens(record["messages"]) > limit and len(answer) > 1:
                answer = answer[: len(answer) * 3 // 4]
                record["messages"][1]["content"] = " ".join(answer) + "."


def histogram(lengths: list[int], edges: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)) -> str:
    """A text histogram of token counts."""
    lines, low = [], 0
    for high in edges:
        count = sum(low < n <= high for n in lengths)
        lines.append(f"{low + 1:>5}-{high:<5} {count:>5} {'#' * round(60 * count / max(len(lengths), 1))}")
        low = high
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="a folder for mix.jsonl and the images")
    args = parser.parse_args(argv)
    out = Path(args.out)
    records = generate(args.examples, out / "images", args.seed)
    (out / "mix.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    turns = [len(r["messages"]) // 2 for r in records]
    answers = sorted(len(m["content"].split()) for r in records for m in r["messages"] if m["role"] == "assistant")
    print(
        f"{len(records)} conversations in {out / 'mix.jsonl'}; QA pairs: mean {sum(turns) / len(turns):.1f}, "
        f"max {max(turns)}; answer words: median {answers[len(answers) // 2]}, min {answers[0]}, max {answers[-1]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
