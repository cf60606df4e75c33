"""Export a RIME model to one directory, then load it back with every loader and compare the embeddings.

    python examples/export.py --model leafyseay/RIME-2B --output-dir rime-2b      # convert a published checkpoint
    python examples/export.py --output-dir /tmp/rime-tiny                         # no model: a tiny random one
    python examples/export.py --model DIR --push-to-hub user/rime-model           # also upload (needs a login)

The directory loads with `RimeEncoder`, with `AutoModel`/`AutoProcessor` (`trust_remote_code=True`) and with
`SentenceTransformer(..., trust_remote_code=True)`; the last two need no `transformers_rime`. Needs the `st` extra.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from PIL import Image, ImageDraw
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoProcessor

from transformers_rime import RimeEncoder


def demo_items() -> list:
    image = Image.new("RGB", (128, 96), "white")
    ImageDraw.Draw(image).ellipse((24, 16, 104, 80), fill="red")
    return ["A red circle on a white background.", image, {"text": "What colour is the shape?", "image": image}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="RIME directory or Hub id (default: a tiny random model)")
    parser.add_argument("--output-dir", default="rime-export")
    parser.add_argument("--results", help="evaluation results JSON to put in the model card")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the export to this Hub repository")
    args = parser.parse_args()

    if args.model:
        encoder = RimeEncoder.from_pretrained(args.model)
    else:
        from transformers_rime.testing import write_published_checkpoint

        encoder = RimeEncoder.from_pretrained(write_published_checkpoint(tempfile.mkdtemp()), device="cpu")
    encoder.save_pretrained(args.output_dir, results=args.results)
    print(f"exported to {args.output_dir}: {', '.join(sorted(os.listdir(args.output_dir)))}")

    items = demo_items()
    reference = encoder.encode(items, mode="disc", role="document")

    st = SentenceTransformer(args.output_dir, trust_remote_code=True, device=str(encoder.device))
    via_st = st.encode_document(items)

    model = AutoModel.from_pretrained(args.output_dir, trust_remote_code=True).to(encoder.device).eval()
    processor = AutoProcessor.from_pretrained(args.output_dir, trust_remote_code=True)
    batch = processor.process_inputs(items, mode="disc", role="document").to(encoder.device)
    with torch.no_grad():
        via_auto = model(**batch).embeddings.float().cpu().numpy()

    for name, embeddings in (("SentenceTransformer", via_st), ("AutoModel", via_auto)):
        print(f"{name:>19}: max |difference| to RimeEncoder = {np.abs(embeddings - reference).max():.1e}")

    if args.push_to_hub:
        encoder.push_to_hub(args.push_to_hub, results=args.results)
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
