"""The `rime` command: `rime demo`, `encode`, `search`, `index`, `eval`, `diagnose`, `export` and `serve`.

```
rime demo [--fast]                         # offline quickstart: train, evaluate in all four mode pairs, reload
rime encode --model DIR --mode gen --role query --output q.npy "a red car" photo.jpg
rime search --model DIR --queries queries.txt --corpus corpus.txt --query-mode gen --corpus-mode disc
rime index --model DIR --corpus corpus.jsonl --output-dir IDX [--mode disc|gen] [--shard-size 1024]
           [--index-type flat|hnsw|ivf] [--overwrite]   # resumable, sharded; under torchrun split across processes
rime search --model DIR --index IDX --queries queries.jsonl|queries.txt [--query-mode gen] [--top-k 10]
rime eval --model DIR --tasks my_task/ other_tasks/ --output-dir eval-out [--query-modes gen --corpus-modes disc]
rime eval --model DIR --mmeb-v2 /data/MMEB-V2 --mmeb-tasks MSCOCO_t2i ViDoRe_docvqa --output-dir mmeb-out
rime diagnose --model DIR --tasks my_task/ --output-dir diag-out   # does the gen embedding read its rewrite?
rime export --model leafyseay/RIME-2B --output-dir rime-2b [--preset rime|ume-r1] [--prompt-from RIME-Train/]
            [--results results.json] [--push-to-hub user/rime-2b] [--overwrite]
rime serve --model DIR --port 8000 [--api-key KEY] [--max-batch-size 8 --max-wait-ms 10]   # OpenAI-compatible
```

Inputs given on the command line or in files (one per line) are texts, or image paths when they end in an image
extension. Output paths are checked before the model loads (exit code 2 when one cannot be written), as are bad
inputs (an unreadable image, a prompt over `--max-length`) reported without a traceback. Files are written whole
(a temporary file, then renamed) and `rime export` builds its directory beside the target, moving it into place
only when complete, so an interrupted command never leaves something that looks finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from .models.rime.configuration_rime import MODES, PRESETS, ROLES
from .serving.command import add_serve_arguments, run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rime", description="RIME multimodal embeddings.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="the offline quickstart: train a small RIME model on synthetic data, evaluate, reload"
    )
    demo.add_argument("--output-dir", type=Path, help="results.json, results.png and the model (default: a temp dir)")
    demo.add_argument("--fast", action="store_true", help="the short CI variant (under 2 minutes on 2 cores)")

    encode = commands.add_parser("encode", help="embed inputs and save a .npy file")
    _add_model_arguments(encode)
    encode.add_argument("inputs", nargs="*", help="texts or image paths")
    encode.add_argument("--input-file", type=Path, help="one input per line")
    encode.add_argument("--mode", choices=MODES, default="disc")
    encode.add_argument("--role", choices=ROLES, default="query")
    encode.add_argument(
        "--output",
        type=Path,
        required=True,
        help="where to write the (N, D) float32 .npy array: exactly this path (folder created if missing)",
    )

    search = commands.add_parser(
        "search", help="rank a corpus (or search a `rime index`) for each query; prints JSON lines"
    )
    _add_model_arguments(search)
    search.add_argument(
        "--queries",
        type=Path,
        required=True,
        help="one query per line; with --index also a .jsonl of items (JSON strings or objects with text, image, "
        "images, video and an optional id; relative paths from the file's folder)",
    )
    corpus_or_index = search.add_mutually_exclusive_group(required=True)
    corpus_or_index.add_argument("--corpus", type=Path, help="one document per line, embedded for this search")
    corpus_or_index.add_argument(
        "--index", type=Path, metavar="IDX", help="an index folder `rime index` built (hits name the corpus ids)"
    )
    search.add_argument("--query-mode", choices=MODES, default="disc")
    search.add_argument(
        "--corpus-mode", choices=MODES, default=None, help="with --corpus (default disc); an index keeps its own"
    )
    search.add_argument("--top-k", type=_at_least(1), default=10, help="hits per query (>= 1)")

    index = commands.add_parser(
        "index",
        help="embed a JSON-lines corpus into a resumable, sharded index with FAISS (torchrun splits the shards)",
        description="Embed a corpus of any size shard by shard into --output-dir, then build a FAISS index over it. "
        "Each shard is written whole; a killed run resumes where it stopped (also with another number of "
        "processes); a changed model or changed settings are refused unless --overwrite. Under torchrun / "
        "accelerate launch the shards are split across the processes (on several machines, --output-dir must be "
        "shared). Corpus lines are JSON objects: an 'id' (unique) and any of text, image, images, video, with "
        "relative paths resolved against the corpus file's folder. Search it with `rime search --index`.",
    )
    _add_model_arguments(index)
    index.add_argument("--corpus", type=Path, required=True, help="the corpus, a .jsonl file (one item per line)")
    index.add_argument("--output-dir", type=Path, required=True, help="the index folder (resumed when it exists)")
    index.add_argument("--mode", choices=MODES, default="disc")
    index.add_argument("--role", choices=ROLES, default="document")
    index.add_argument(
        "--shard-size", type=_at_least(1), default=1024, help="items per shard: the unit of resumption and of memory"
    )
    index.add_argument(
        "--index-type",
        choices=("flat", "hnsw", "ivf"),
        default="flat",
        help="flat: exact search (IndexFlatIP); hnsw or ivf: approximate, for corpora in the millions (their "
        "recall@10 against exact search is printed and recorded in the manifest)",
    )
    index.add_argument("--nlist", type=_at_least(1), help="IVF lists (default 4 sqrt(N), at most N / 39)")
    index.add_argument("--nprobe", type=_at_least(1), help="IVF lists searched per query (default nlist / 8)")
    index.add_argument("--hnsw-m", type=_at_least(2), default=32, help="HNSW links per node")
    index.add_argument("--ef-search", type=_at_least(1), default=128, help="HNSW search breadth")
    index.add_argument(
        "--overwrite", action="store_true", help="rebuild an index made with another model or other settings"
    )

    evaluation = commands.add_parser(
        "eval",
        help="evaluate on retrieval task folders in every mode pair; writes results.json, .md and .png",
        description="Evaluate a RIME model on retrieval tasks, in every query-mode x corpus-mode pair. Embeddings "
        "are cached under a fingerprint of the model and the data, so an interrupted run resumes and a changed "
        "model never reuses old results.",
        epilog=_task_layout(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(evaluation)
    evaluation.add_argument(
        "--tasks", type=Path, nargs="+", help="task folders, or folders whose subfolders are tasks"
    )
    evaluation.add_argument(
        "--mmeb-v2", type=Path, metavar="ROOT", help="a local copy of MMEB-V2's evaluation data (layout below)"
    )
    evaluation.add_argument(
        "--mmeb-tasks", nargs="+", metavar="NAME", help="MMEB-V2 tasks to run (default: every readable one)"
    )
    evaluation.add_argument("--output-dir", type=Path, required=True)
    evaluation.add_argument("--query-modes", nargs="+", choices=MODES, default=list(MODES))
    evaluation.add_argument("--corpus-modes", nargs="+", choices=MODES, default=list(MODES))
    evaluation.add_argument("--cache-dir", type=Path, help="embedding cache (default: OUTPUT_DIR/cache)")
    evaluation.add_argument("--benchmark", help="a name for the results")

    diagnose = commands.add_parser(
        "diagnose",
        help="rewrite sensitivity: Hit@1 of gen-mode queries with their own rewrite, another query's, or none",
        description="Measure how much the gen embeddings depend on their rewrites: each query is embedded with the "
        "rewrite it wrote, with another query's and with none (teacher-forced), and ranks the corpus (disc and gen "
        "mode). A model whose gen embedding ignores its rewrite shows no drop and cosines near 1. Prints a table "
        "and writes OUTPUT_DIR/rewrite_sensitivity.json.",
        epilog=evaluation.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(diagnose)
    diagnose.add_argument(
        "--tasks", type=Path, nargs="+", required=True, help="task folders, or folders whose subfolders are tasks"
    )
    diagnose.add_argument("--output-dir", type=Path, required=True)
    diagnose.add_argument("--seed", type=int, default=0, help="seeds which query's rewrite each query gets")

    export = commands.add_parser(
        "export", help="write a directory for every loader (transformers, sentence-transformers) with a model card"
    )
    export.add_argument("--model", required=True, help="RIME directory, Hub id, or published RIME/UME-R1 checkpoint")
    export.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help="written beside it first, then moved into place; an existing non-empty one needs --overwrite",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --output-dir (once the new export is complete)"
    )
    export.add_argument("--results", type=Path, help="evaluation results JSON for the model card")
    export.add_argument("--base-model", help="the card's base_model (default: --model when it is a Hub id)")
    export.add_argument("--license", default="apache-2.0", help="the card's license (check your backbone's)")
    export.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the export to this Hub repository")
    export.add_argument("--private", action="store_true", help="create the Hub repository as private")
    export.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="how a published checkpoint is fed (prompt, tags, rewrite budget); default: 'ume-r1' when the model's "
        "name contains UME-R1, else 'rime'",
    )
    export.add_argument(
        "--prompt-from",
        type=Path,
        metavar="PATH",
        help="training data (RIME-Train / UME-R1 SFT or RL files or folder) to recover the generation prompt from",
    )

    serve = commands.add_parser("serve", help="serve the model on an OpenAI-compatible /v1/embeddings endpoint")
    add_serve_arguments(serve, _at_least)

    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args.output_dir, args.fast)
    if args.command == "encode":
        return run_encode(args)
    if args.command == "export":
        return run_export(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "diagnose":
        return run_diagnose(args)
    if args.command == "index":
        return run_index(args)
    if args.command == "serve":
        return run_serve(args)
    return run_search(args)


def _at_least(minimum: int):
    """An argparse type: a whole number >= `minimum`, else a clear error (exit code 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse names in its own messages
    return parse


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="RIME directory, Hub id, or published RIME/UME-R1 checkpoint")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=_at_least(1), default=8, help="items per forward / generate call")
    parser.add_argument(
        "--max-new-tokens", type=_at_least(0), default=None, help="gen-mode rewrite budget (default: the model's)"
    )
    parser.add_argument(
        "--max-length",
        type=_at_least(1),
        default=None,
        help="refuse (exit code 2, naming the item) prompts longer than this many tokens; RIME never truncates",
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weights dtype (default: the checkpoint's)",
    )


def _load_encoder(args, device=None):
    import torch

    from .encoder import RimeEncoder

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    return RimeEncoder.from_pretrained(args.model, device=device, dtype=dtype)


def _read_lines(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _output_folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (created if missing), or `None` when they can."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} exists and is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create the folder {folder}: {error.strerror or error}"
    try:  # a real write, not os.access: that says yes to root on a read-only file system
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot write in {folder}: {error.strerror or error}"
    return None


def _output_file_problem(path: Path) -> str | None:
    """Why `path` cannot be written (its folder is created if missing), or `None` when it can."""
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return _output_folder_problem(path.parent)


def _budget(args) -> dict:
    """The batch size, rewrite budget and prompt-length bound the encoding commands share."""
    return {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "max_length": args.max_length}


def _refuse(command: str, message: str) -> int:
    print(f"rime {command}: {message}", file=sys.stderr)
    return 2


def run_encode(args) -> int:
    import io

    import numpy as np

    from .files import write_bytes

    problem = _output_file_problem(args.output)
    if problem:
        return _refuse("encode", f"--output {args.output}: {problem}")
    try:
        inputs = list(args.inputs) + (_read_lines(args.input_file) if args.input_file else [])
    except OSError as error:
        return _refuse("encode", f"--input-file {args.input_file}: {error.strerror or error}")
    if not inputs:
        return _refuse("encode", "no inputs (give them as arguments or with --input-file)")
    encoder = _load_encoder(args, args.device)
    try:
        embeddings = encoder.encode(
            inputs,
            mode=args.mode,
            role=args.role,
            **_budget(args),
        )
    except (ValueError, FileNotFoundError) as error:  # a bad input, named by the encoder
        return _refuse("encode", str(error))
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    write_bytes(args.output, buffer.getvalue())  # exactly at --output (np.save would add .npy), written whole
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.output}")
    return 0


def _task_layout() -> str:
    from .evaluation import mmeb_data, tasks

    layout = tasks.__doc__.split("\n\n", 1)[1]
    mmeb_layout = mmeb_data.__doc__.split("```")[1]
    return "Task folder layout:\n\n" + layout.replace("`", "") + "\n\nMMEB-V2 layout (--mmeb-v2 ROOT):\n" + mmeb_layout


def _task_folders(paths: list[Path]) -> list[Path]:
    folders = []
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder.")
        if (path / "queries.jsonl").is_file() or (path / "corpus.jsonl").is_file():
            folders.append(path)
            continue
        children = sorted(p for p in path.iterdir() if (p / "queries.jsonl").is_file())
        if not children:
            raise FileNotFoundError(
                f"{path} holds no task: expected corpus.jsonl and queries.jsonl in it or in its subfolders."
            )
        folders.extend(children)
    return folders


def run_eval(args) -> int:
    from .evaluation import evaluate, read_mmeb_v2, read_task

    if not args.tasks and args.mmeb_v2 is None:
        print("rime eval: give task folders (--tasks) or an MMEB-V2 copy (--mmeb-v2)", file=sys.stderr)
        return 2
    for option, folder in (("--output-dir", args.output_dir), ("--cache-dir", args.cache_dir)):
        problem = _output_folder_problem(folder) if folder is not None else None
        if problem:
            return _refuse("eval", f"{option} {folder}: {problem}")
    try:
        tasks = [read_task(folder) for folder in _task_folders(args.tasks or [])]
        if args.mmeb_v2 is not None:
            tasks += read_mmeb_v2(args.mmeb_v2, args.mmeb_tasks)
    except (FileNotFoundError, ValueError) as error:
        print(f"rime eval: {error}", file=sys.stderr)
        return 2
    device, main_process, state = args.device, True, None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun / accelerate launch: one device per process
        from accelerate import PartialState

        state = PartialState()
        device, main_process = device or str(state.device), state.is_main_process
    encoder = _load_encoder(args, device)
    try:
        results = evaluate(
            encoder,
            tasks,
            query_modes=tuple(args.query_modes),
            corpus_modes=tuple(args.corpus_modes),
            output_dir=args.output_dir,
            cache_dir=args.cache_dir,
            benchmark=args.benchmark,
            **_budget(args),
        )
    except (ValueError, FileNotFoundError) as error:  # a bad item, named by the encoder (finished tasks are kept)
        return _refuse("eval", str(error))
    if main_process:
        print((args.output_dir / "results.md").read_text(encoding="utf-8"))
        if args.mmeb_v2 is not None:
            _report_mmeb(results, args.output_dir)
        print(f"Wrote results.json, results.md and results.png to {args.output_dir} ({len(results['tasks'])} tasks).")
    if state is not None:
        state.destroy_process_group()  # a process that exits with a live gloo group can abort (SIGABRT)
    return 0


def run_diagnose(args) -> int:
    from .evaluation import read_task
    from .evaluation.sensitivity import check_tasks, format_rewrite_sensitivity, rewrite_sensitivity
    from .files import write_json

    problem = _output_folder_problem(args.output_dir)
    if problem:
        return _refuse("diagnose", f"--output-dir {args.output_dir}: {problem}")
    try:
        tasks = [read_task(folder) for folder in _task_folders(args.tasks)]
        check_tasks(tasks)
    except (FileNotFoundError, ValueError) as error:
        return _refuse("diagnose", str(error))
    encoder = _load_encoder(args, args.device)
    try:
        results = rewrite_sensitivity(encoder, tasks, seed=args.seed, **_budget(args))
    except (ValueError, FileNotFoundError) as error:  # a bad item, named by the encoder
        return _refuse("diagnose", str(error))
    path = write_json(args.output_dir / "rewrite_sensitivity.json", results)
    print(format_rewrite_sensitivity(results))
    print(f"Wrote {path}.")
    return 0


def _report_mmeb(results: dict, output_dir: Path) -> None:
    """MMEB-V2's own aggregate rows (per modality and meta-task, `overall` over its tasks) in `mmeb_v2.json`."""
    from .evaluation.mmeb import MMEB_V2_BY_NAME, MMEB_V2_MANIFEST_VERSION, mmeb_v2_scores
    from .files import write_json

    rows = mmeb_v2_scores({name: results["scores"][name] for name in results["tasks"] if name in MMEB_V2_BY_NAME})
    write_json(output_dir / "mmeb_v2.json", {"manifest": MMEB_V2_MANIFEST_VERSION, "scores": rows})
    print(f"MMEB-V2 aggregates ({MMEB_V2_MANIFEST_VERSION}), written to mmeb_v2.json:")
    for row, scores in rows.items():
        print(f"  {row:<24} " + "  ".join(f"{pair} {value:.3f}" for pair, value in scores.items()))


def run_search(args) -> int:
    if args.index is not None:
        return run_index_search(args)
    args.corpus_mode = args.corpus_mode or "disc"
    try:
        queries, corpus = _read_lines(args.queries), _read_lines(args.corpus)
    except OSError as error:
        return _refuse("search", f"{error.filename}: {error.strerror or error}")
    if not corpus:
        return _refuse("search", f"--corpus {args.corpus} holds no documents")
    encoder = _load_encoder(args, args.device)
    try:
        hits = encoder.search(
            queries,
            corpus,
            top_k=args.top_k,
            query_mode=args.query_mode,
            corpus_mode=args.corpus_mode,
            **_budget(args),
        )
    except (ValueError, FileNotFoundError) as error:  # a bad input, named by the encoder
        return _refuse("search", str(error))
    for query, row in zip(queries, hits):
        print(
            json.dumps(
                {
                    "query": query,
                    "hits": [
                        {"corpus_id": h.corpus_id, "document": corpus[h.corpus_id], "score": round(h.score, 6)}
                        for h in row
                    ],
                }
            )
        )
    return 0


def run_index(args) -> int:
    from .corpus_index import IndexSettingsError, check_index_folder, index_corpus

    try:
        with open(args.corpus, "rb"):
            pass
    except OSError as error:
        return _refuse("index", f"--corpus {args.corpus}: {error.strerror or error}")
    if args.corpus.is_dir():
        return _refuse("index", f"--corpus {args.corpus} is a folder, not a .jsonl file")
    problem = _output_folder_problem(args.output_dir)
    if problem:
        return _refuse("index", f"--output-dir {args.output_dir}: {problem}")
    try:  # what can be compared before the model loads (the model's fingerprint is compared after)
        check_index_folder(
            args.output_dir, {"mode": args.mode, "role": args.role, "shard_size": args.shard_size}, args.overwrite
        )
    except (IndexSettingsError, ValueError) as error:
        return _refuse("index", str(error))
    device, main_process, state = args.device, True, None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun / accelerate launch: one device per process
        from accelerate import PartialState

        state = PartialState()
        device, main_process = device or str(state.device), state.is_main_process
    try:
        encoder = _load_encoder(args, device)
        manifest = index_corpus(
            encoder,
            args.corpus,
            args.output_dir,
            mode=args.mode,
            role=args.role,
            shard_size=args.shard_size,
            index_type=args.index_type,
            nlist=args.nlist,
            nprobe=args.nprobe,
            hnsw_m=args.hnsw_m,
            ef_search=args.ef_search,
            overwrite=args.overwrite,
            **_budget(args),
        )
    except (ValueError, FileNotFoundError, TypeError, FloatingPointError, ImportError) as error:
        # a bad corpus line (named as corpus.jsonl:LINE) or settings that differ from the index's
        return _refuse("index", str(error)) if main_process else 2
    finally:
        if state is not None:
            state.destroy_process_group()  # a process that exits with a live gloo group can abort (SIGABRT)
    if manifest is not None:
        faiss = manifest["faiss"]
        recall = f", recall@10 {faiss['recall_at_10']:.4f} against exact search" if "recall_at_10" in faiss else ""
        print(
            f"indexed {manifest['corpus']['items']} items ({manifest['corpus']['shards']} shards, "
            f"{manifest['settings']['mode']} mode) into {args.output_dir}: {faiss['type']} FAISS index{recall}"
        )
    return 0


def run_index_search(args) -> int:
    from .corpus_index import CorpusIndex, embed_lines, read_queries

    try:
        index = CorpusIndex.load(args.index)
    except (ValueError, OSError, ImportError) as error:
        return _refuse("search", f"--index {args.index}: {error}")
    if args.corpus_mode is not None and args.corpus_mode != index.mode:
        return _refuse("search", f"--corpus-mode {args.corpus_mode}: {args.index} was embedded in {index.mode} mode")
    try:
        queries = read_queries(args.queries)
    except OSError as error:
        return _refuse("search", f"--queries {args.queries}: {error.strerror or error}")
    except ValueError as error:
        return _refuse("search", str(error))
    if not queries:
        return _refuse("search", f"--queries {args.queries} holds no queries")
    encoder = _load_encoder(args, args.device)
    try:
        index.check_encoder(encoder)  # the queries must be embedded by the corpus's model
        embeddings, _ = embed_lines(
            encoder,
            [item for _, _, item, _ in queries],
            [where for where, _, _, _ in queries],
            mode=args.query_mode,
            role="query",
            **_budget(args),
        )
    except (ValueError, FileNotFoundError, TypeError, FloatingPointError) as error:
        return _refuse("search", str(error))
    for (_, query_id, _, shown), row in zip(queries, index.search(embeddings, args.top_k)):
        line = {"query": shown} if query_id is None else {"query": shown, "query_id": query_id}
        line["hits"] = [
            {"corpus_id": h.corpus_id, "document": index.document(h.position), "score": round(h.score, 6)} for h in row
        ]
        print(json.dumps(line))
    return 0


def run_export(args) -> int:
    from .encoder import RimeEncoder

    output = args.output_dir
    if output.exists() and not output.is_dir():
        return _refuse("export", f"--output-dir {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        return _refuse("export", f"--output-dir {output} is not empty (pass --overwrite to replace it)")
    if not output.resolve().name:
        return _refuse("export", f"--output-dir {output}: cannot export to a file system root")
    problem = _output_folder_problem(output.resolve().parent)  # the export is built there, beside the target
    if problem:
        return _refuse("export", f"--output-dir {output}: {problem}")
    if args.results is not None and not args.results.is_file():
        print(f"rime export: results file not found: {args.results}", file=sys.stderr)
        return 2
    prompt = {}
    if args.prompt_from is not None:
        from .data import count_prompts, infer_prompt

        try:
            counts = count_prompts(args.prompt_from)
            prompt = infer_prompt(counts)
        except (OSError, ValueError) as error:
            print(f"rime export: --prompt-from {args.prompt_from}: {error}", file=sys.stderr)
            return 2
        uses = counts["instructions"][prompt["gen_instruction"]]
        tags = f", tags {prompt['rewrite_start']} {prompt['rewrite_end']}" if "rewrite_start" in prompt else ""
        print(
            f"recovered gen_instruction {prompt['gen_instruction']!r}{tags} from {counts['records']} records of "
            f"{args.prompt_from} ({uses} of {sum(counts['instructions'].values())} prompts)"
        )
    encoder = RimeEncoder.from_pretrained(args.model, device="cpu", preset=args.preset, **prompt)
    card = {"license": args.license, "base_model": args.base_model}
    if args.push_to_hub:
        card["model_id"] = args.push_to_hub
    # built beside the target, moved into place only once complete: never a half-written export that looks loadable
    target = output.resolve()
    staging = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:12]}")
    staging.mkdir()  # not mkdtemp: its 0700 would stay on the export
    try:
        encoder.save_pretrained(staging, results=args.results, model_card_kwargs=card)
        replaced = _move_into_place(staging, target, args.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if replaced is None:
        shutil.rmtree(staging, ignore_errors=True)
        return _refuse("export", f"--output-dir {output} was filled by something else meanwhile; left it as it is")
    print(
        f"wrote {args.output_dir}{' (replacing the previous one)' if replaced else ''}: loads with RimeEncoder, "
        "AutoModel/AutoProcessor and SentenceTransformer"
    )
    if args.push_to_hub:
        encoder.push_to_hub(
            args.push_to_hub, private=args.private or None, results=args.results, model_card_kwargs=card
        )
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0


def _move_into_place(staging: Path, target: Path, overwrite: bool) -> bool | None:
    """Rename the complete `staging` folder to `target`: `False` when there was none (or an empty one), `True` when
    a non-empty one was replaced (`overwrite`; the old one is renamed aside, then deleted), `None` when one turned
    up meanwhile without `overwrite` (nothing moved)."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(staging, target)
        return False
    if not overwrite or not target.is_dir():
        return None
    old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def run_demo(output_dir: Path | None = None, fast: bool = False) -> int:
    """The quickstart: train a small random RIME model offline, evaluate it in every mode pair, reload it."""
    from .quickstart import run_quickstart

    output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="rime-quickstart-"))
    results = run_quickstart(output_dir, fast=fast)
    return 0 if results["reload_max_difference"] < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
