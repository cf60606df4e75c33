"""The evaluation harness: tasks from folders, all four mode pairs, the cache, resuming, invariances, `rime eval`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_rime import RimeEncoder
from transformers_rime.cli import main as rime
from transformers_rime.evaluation import RetrievalTask, encoder_fingerprint, evaluate, read_task, write_task
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


PAIRS = {"disc->disc", "disc->gen", "gen->disc", "gen->gen"}


@pytest.fixture(scope="module")
def encoder():
    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor), processor)


def text_task(name="colors", corpus_order=None) -> RetrievalTask:
    corpus = ["a red car", "a black cat", "a blue chart", "a white chair", "a green fox", "a brown dog"]
    queries = ["red automobile", "ebony kitten", "azure graph"]
    relevance = [{0: 1}, {1: 2, 5: 1}, {2: 1}]
    if corpus_order is not None:  # corpus_order[new] = old
        position = {old: new for new, old in enumerate(corpus_order)}
        corpus = [corpus[old] for old in corpus_order]
        relevance = [{position[c]: g for c, g in grades.items()} for grades in relevance]
    return RetrievalTask(name, queries=queries, corpus=corpus, relevance=relevance, metric="ndcg_linear@5")


def image_task_folder(tmp_path):
    """A local-pool task with image candidates, written in the folder format."""
    folder = tmp_path / "shapes"
    (folder / "images").mkdir(parents=True)
    colors = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220)}
    for name, rgb in colors.items():
        Image.new("RGB", (56, 56), rgb).save(folder / "images" / f"{name}.png")
    corpus = [{"id": name, "image": f"images/{name}.png", "text": f"a {name} square"} for name in colors]
    queries = [
        {"id": "q0", "text": "something red", "relevant": ["red"], "candidates": ["red", "green"]},
        {"id": "q1", "text": "something blue", "relevant": {"blue": 1}, "candidates": ["red", "green", "blue"]},
    ]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (folder / "task.json").write_text(json.dumps({"metric": "hit@1", "group": "image"}))
    return folder


def test_rime_eval_writes_json_and_markdown_with_all_four_mode_pairs(tmp_path, encoder, capsys):
    encoder.save_pretrained(tmp_path / "model")
    write_task(text_task(), tmp_path / "tasks" / "colors")
    image_task_folder(tmp_path / "tasks")
    code = rime(
        [
            "eval",
            "--model",
            str(tmp_path / "model"),
            "--tasks",
            str(tmp_path / "tasks"),
            "--output-dir",
            str(tmp_path / "out"),
            "--max-new-tokens",
            "4",
            "--benchmark",
            "toy",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["scores"]) == {"colors", "shapes", "overall", "group: image"}
    for row in results["scores"].values():
        assert set(row) == PAIRS and all(0.0 <= v <= 1.0 for v in row.values())
    shapes = results["tasks"]["shapes"]
    assert shapes["metric"] == "hit@1" and set(shapes["generated_tokens_per_item"]) == {"queries/gen", "corpus/gen"}
    assert all(speed > 0 for speed in shapes["items_per_second"].values())
    assert results["benchmark"] == "toy" and results["model_fingerprint"] and results["versions"]["transformers"]
    overall = np.mean([results["scores"][t]["gen->disc"] for t in ("colors", "shapes")])
    assert results["scores"]["overall"]["gen->disc"] == pytest.approx(overall)
    with Image.open(tmp_path / "out" / "results.png") as plot:
        assert plot.width > 400 and plot.height > 200  # four panels: 2 tasks, overall, the image group
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "gen->disc" in markdown and "| shapes |" in markdown
    assert "results.json, results.md and results.png" in capsys.readouterr().out
    # the model-card generator reads the same file
    from transformers_rime.model_card import load_results

    assert load_results(tmp_path / "out" / "results.json")["scores"]["overall"] == results["scores"]["overall"]


def test_rime_eval_reports_missing_data_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert rime(["eval", "--model", "unused", "--tasks", str(tmp_path / "empty"), "--output-dir", str(tmp_path)]) == 2
    assert "holds no task" in capsys.readouterr().err
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "queries.jsonl").write_text('{"id": "q", "text": "x", "relevant": ["d9"]}\n')
    assert rime(["eval", "--model", "unused", "--tasks", str(folder), "--output-dir", str(tmp_path)]) == 2
    assert "corpus.jsonl is missing" in capsys.readouterr().err


def test_task_folder_round_trip_and_errors(tmp_path):
    task = read_task(write_task(text_task(), tmp_path / "colors"))
    assert task.relevance == text_task().relevance and task.metric == "ndcg_linear@5" and task.pools is None
    shapes = read_task(image_task_folder(tmp_path))
    assert shapes.pools == [[0, 1], [0, 1, 2]] and shapes.relevance == [{0: 1.0}, {2: 1.0}]
    with pytest.raises(ValueError, match="not in its pool"):
        RetrievalTask("bad", ["q"], ["a", "b"], [{1: 1}], pools=[[0]])
    with pytest.raises(ValueError, match="Unknown metric"):
        RetrievalTask("bad", ["q"], ["a"], [{0: 1}], metric="map@5")


def test_shuffling_the_corpus_or_changing_the_batch_size_leaves_the_metrics_unchanged(encoder):
    reference = evaluate(encoder, [text_task()], max_new_tokens=4, show_progress_bar=False)
    shuffled = evaluate(
        encoder, [text_task(corpus_order=[3, 5, 0, 2, 1, 4])], max_new_tokens=4, batch_size=2, show_progress_bar=False
    )
    for pair in PAIRS:
        assert shuffled["tasks"]["colors"]["metrics"][pair] == pytest.approx(
            reference["tasks"]["colors"]["metrics"][pair]
        )


def test_a_changed_model_never_reuses_cached_results(tmp_path):
    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor)
    encoder = RimeEncoder(model, processor)
    kwargs = dict(output_dir=tmp_path, max_new_tokens=4, show_progress_bar=False)
    first = evaluate(encoder, [text_task()], **kwargs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    second = evaluate(encoder, [text_task()], **kwargs)
    assert second["model_fingerprint"] != first["model_fingerprint"]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one embedding folder per model
    fresh = evaluate(encoder, [text_task()], max_new_tokens=4, show_progress_bar=False)  # no cache at all
    assert second["tasks"]["colors"]["metrics"] == fresh["tasks"]["colors"]["metrics"]


def test_an_interrupted_run_resumes_without_redoing_finished_work(tmp_path, encoder, monkeypatch):
    tasks = [text_task("first"), text_task("second", corpus_order=[1, 0, 2, 3, 4, 5])]
    calls = []
    original = RimeEncoder.generate

    def generate(self, items, **kwargs):
        calls.append(items[0])
        if len(calls) == 3:  # first task done (2 gen calls), then the run is killed
            raise KeyboardInterrupt
        return original(self, items, **kwargs)

    monkeypatch.setattr(RimeEncoder, "generate", generate)
    with pytest.raises(KeyboardInterrupt):
        evaluate(encoder, tasks, output_dir=tmp_path, max_new_tokens=4, show_progress_bar=False)
    assert (tmp_path / "tasks" / "first.json").is_file() and not (tmp_path / "results.json").exists()
    calls.clear()
    results = evaluate(encoder, tasks, output_dir=tmp_path, max_new_tokens=4, show_progress_bar=False)
    # the first task is read back; the second's queries are the first's (cached by content): only its corpus runs
    assert len(calls) == 1
    assert set(results["tasks"]) == {"first", "second"}
    monkeypatch.setattr(RimeEncoder, "generate", original)
    uncached = evaluate(encoder, tasks, max_new_tokens=4, show_progress_bar=False)
    assert results["scores"] == uncached["scores"]


def test_the_cache_never_reuses_embeddings_made_under_other_settings(tmp_path):
    """Every setting that changes an embedding keys the cache: the rewrite budget in effect (also when it comes from
    the model config), the processor's prompts, pixel budget and video settings, and the model config."""
    processor = tiny_rime_processor()
    encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
    task = text_task()

    def run(**kwargs):
        return evaluate(encoder, [task], output_dir=tmp_path, show_progress_bar=False, **kwargs)

    def fresh(**kwargs):  # the same settings, no cache
        return evaluate(encoder, [task], show_progress_bar=False, **kwargs)["tasks"]["colors"]["metrics"]

    encoder.model.config.max_new_tokens = 1
    first = run()
    assert first["max_new_tokens"] == 1
    encoder.model.config.max_new_tokens = 6  # a budget from the config, not from the argument
    second = run()
    assert second["max_new_tokens"] == 6
    assert second["tasks"]["colors"]["metrics"] == fresh()
    assert (
        second["tasks"]["colors"]["generated_tokens_per_item"] != first["tasks"]["colors"]["generated_tokens_per_item"]
    )

    fingerprints = {second["model_fingerprint"]}
    changes = [
        lambda: setattr(encoder.processor, "query_instruction", "Find the matching document:"),
        lambda: setattr(encoder.processor, "max_video_frames", 4),
        lambda: setattr(encoder.processor.image_processor, "size", {"shortest_edge": 784, "longest_edge": 784 * 4}),
        lambda: setattr(
            encoder.processor, "chat_template", encoder.processor.chat_template.replace("helpful", "kind")
        ),
        lambda: setattr(encoder.model.config, "normalize", False),
        lambda: setattr(encoder.model.vlm.generation_config, "eos_token_id", [1, 2]),
    ]
    for change in changes:
        change()
        fingerprints.add(encoder_fingerprint(encoder))
    assert len(fingerprints) == len(changes) + 1
    # under the changed settings, the cache in the same folder serves what a fresh run computes
    encoder.model.config.normalize = True
    assert run(max_new_tokens=6)["tasks"]["colors"]["metrics"] == fresh(max_new_tokens=6)


def test_a_budget_change_reuses_the_disc_embeddings(tmp_path, encoder, monkeypatch):
    evaluate(encoder, [text_task()], output_dir=tmp_path, max_new_tokens=2, show_progress_bar=False)
    calls = []
    original = RimeEncoder.encode
    monkeypatch.setattr(RimeEncoder, "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    results = evaluate(encoder, [text_task()], output_dir=tmp_path, max_new_tokens=3, show_progress_bar=False)
    assert not calls  # both sides' disc embeddings came from the cache
    assert results["max_new_tokens"] == 3 and results["tasks"]["colors"]["max_new_tokens"] == 3


def test_rime_eval_loads_the_model_in_the_dtype_asked_for(tmp_path):
    from transformers_rime.testing import write_published_checkpoint

    published = write_published_checkpoint(tmp_path / "published")
    write_task(text_task(), tmp_path / "tasks" / "colors")
    arguments = ["eval", "--model", str(published), "--tasks", str(tmp_path / "tasks"), "--max-new-tokens", "2"]
    assert rime([*arguments, "--output-dir", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert rime([*arguments, "--output-dir", str(tmp_path / "auto")]) == 0
    assert json.loads((tmp_path / "bf16" / "results.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "auto" / "results.json").read_text())["dtype"] == "float32"
