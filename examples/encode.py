"""Embed a few texts and images in both modes and search across modes with `RimeEncoder`.

    python examples/encode.py --model leafyseay/RIME-2B          # a published or exported checkpoint
    python examples/encode.py                                    # no model given: a tiny random one, offline

With random weights the scores are meaningless; the script shows the API end to end.
"""

from __future__ import annotations

import argparse
import tempfile

from PIL import Image, ImageDraw

from transformers_rime import RimeEncoder


def demo_images() -> list[Image.Image]:
    images = []
    for color in ("red", "blue"):
        image = Image.new("RGB", (128, 96), "white")
        ImageDraw.Draw(image).ellipse((24, 16, 104, 80), fill=color)
        images.append(image)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="RIME directory or Hub id (default: a tiny random model)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    if args.model:
        encoder = RimeEncoder.from_pretrained(args.model)
    else:
        from transformers_rime.testing import write_published_checkpoint

        encoder = RimeEncoder.from_pretrained(write_published_checkpoint(tempfile.mkdtemp()), device="cpu")

    red, blue = demo_images()
    corpus = ["A red circle on a white background.", "A blue circle on a white background.", red, blue]
    queries = ["a red round shape", {"text": "What colour is this?", "image": blue}]

    index = encoder.encode_documents(corpus, mode="disc")  # one forward pass per document
    print("corpus index:", index.shape)
    for generation in encoder.generate(queries, max_new_tokens=args.max_new_tokens):
        print(f"rewrite ({'finished' if generation.finished else 'appended <gen_emb>'}): {generation.text!r}")
    for query_mode in ("disc", "gen"):
        hits = encoder.search(
            queries, corpus_embeddings=index, top_k=2, query_mode=query_mode, max_new_tokens=args.max_new_tokens
        )
        for query, row in zip(queries, hits):
            label = query if isinstance(query, str) else query["text"]
            print(f"{query_mode}->disc  {label!r:30} " + "  ".join(f"#{h.corpus_id} {h.score:+.3f}" for h in row))


if __name__ == "__main__":
    main()
