"""Run under `torchrun --nproc_per_node 2` by test_distributed.py (CPU, gloo).

Both processes evaluate the same tiny model on the same task with one output folder; each records how many items it
embedded per call, and rank 0 writes them next to the harness's own files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers.utils import logging

from transformers_rime import RimeEncoder
from transformers_rime.evaluation import RetrievalTask, evaluate
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


torch.set_num_threads(1)
logging.set_verbosity_error()


def task() -> RetrievalTask:
    corpus = ["a red car", "a black cat", "a blue chart", "a white chair", "a green fox"]
    queries = ["red automobile", "ebony kitten", "azure graph"]
    return RetrievalTask("colors", queries, corpus, [{0: 1}, {1: 1}, {2: 2, 3: 1}], metric="ndcg_linear@5")


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    processor = tiny_rime_processor()
    encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
    embedded = []
    for name in ("encode", "generate"):
        original = getattr(encoder, name)

        def counted(items, *args, _original=original, **kwargs):
            embedded.append(len(items))
            return _original(items, *args, **kwargs)

        setattr(encoder, name, counted)
    evaluate(encoder, [task()], output_dir=out, max_new_tokens=4, show_progress_bar=False)
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, embedded)
    if dist.get_rank() == 0:
        (out / "embedded.json").write_text(json.dumps(per_rank))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
