"""The training-data readers: RIME-Train / UME-R1 SFT json and plain jsonl pairs, on real files in `tmp_path`."""

from __future__ import annotations

import json
import os

import pytest

from transformers_rime.data import (
    clean_human_text,
    clean_rewrite,
    normalize_item,
    read_pairs,
    read_rime_rl,
    read_rime_sft,
)
from transformers_rime.inputs import parse_input
from transformers_rime.testing import random_image


GEN_PROMPT = (
    "\n<disc_emb>\nRepresent the above input text, images, videos, or any combination ... use the <gen_emb> tag."
)
COLUMNS = (
    "query",
    "positive",
    "query_rewrite",
    "positive_rewrite",
    "query_instruction",
    "positive_instruction",
    "source",
    "origin",
)


def side(human, gpt=None, image=None, video=None, roles=("from", "value", "human", "gpt")):
    role_key, value_key, human_role, gpt_role = roles
    turns = [{role_key: human_role, value_key: human}]
    if gpt is not None:
        turns.append({role_key: gpt_role, value_key: gpt})
    return {"image": image, "video": video, "conversations": turns}


@pytest.fixture
def media(tmp_path):
    """A media root with two images, a UME-R1 blank.jpg and a frame directory with unpadded frame numbers."""
    root = tmp_path / "media"
    (root / "images").mkdir(parents=True)
    for seed, name in enumerate(["images/cat.jpg", "images/dog.png", "blank.jpg"]):
        random_image(32, 24, seed=seed).save(root / name)
    frames = root / "frames" / "vid_1"
    frames.mkdir(parents=True)
    for index in (10, 2, 1):
        random_image(16, 16, seed=index).save(frames / f"frame_{index}.jpg")
    (frames / "notes.txt").write_text("not a frame")
    return root


def write_json(path, records, lines=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records)
    path.write_text(text)
    return path


def test_clean_helpers():
    assert (
        clean_human_text("<image>\n<video>Find a caption: a cat\n<disc_emb>\nRepresent ...") == "Find a caption: a cat"
    )
    assert clean_human_text("<image>" + GEN_PROMPT) is None
    assert clean_human_text(None) is None
    assert clean_rewrite("<rewrite>x</rewrite> <|im_end|>\n<gen_emb>\n") == "<rewrite>x</rewrite>"
    assert clean_rewrite("<gen_emb>") is None
    assert clean_rewrite(None) is None


def test_read_rime_sft_two_sources(tmp_path, media):
    sft = tmp_path / "RIME-SFT"
    write_json(
        sft / "CIRR.json",
        [
            {
                "qry": side(
                    "<image>\nRepresent the given image with the following question: What is in the image?"
                    + GEN_PROMPT,
                    "<rewrite>a cat on a sofa</rewrite><gen_emb>",
                    image="images/cat.jpg",
                ),
                "pos": side("<image>\nRepresent the given image." + GEN_PROMPT, image=["images/dog.png"]),
            },
            {
                "qry": side("a dog" + GEN_PROMPT),
                "pos": side("<video>\n" + GEN_PROMPT, "<rewrite>v</rewrite>", video="frames/vid_1"),
            },
        ],
    )
    role_content = ("role", "content", "user", "assistant")
    write_json(
        sft / "MSCOCO.jsonl",
        [{"qry": side("q" + GEN_PROMPT, "<rewrite>r</rewrite><gen_emb>", roles=role_content), "pos": side("p")}],
        lines=True,
    )
    (sft / "README.md").write_text("not data")

    dataset = read_rime_sft(sft, media_root=media)
    assert dataset.column_names == list(COLUMNS)
    frames = [str(media / "frames" / "vid_1" / f"frame_{i}.jpg") for i in (1, 2, 10)]
    assert dataset.to_list() == [
        {
            "query": {
                "text": "Represent the given image with the following question: What is in the image?",
                "images": [str(media / "images" / "cat.jpg")],
                "video": None,
            },
            "positive": {
                "text": "Represent the given image.",
                "images": [str(media / "images" / "dog.png")],
                "video": None,
            },
            "query_rewrite": "<rewrite>a cat on a sofa</rewrite>",
            "positive_rewrite": None,
            "query_instruction": "",
            "positive_instruction": "",
            "source": "CIRR",
            "origin": f"{sft / 'CIRR.json'}[0]",
        },
        {
            "query": {"text": "a dog", "images": [], "video": None},
            "positive": {"text": None, "images": [], "video": frames},
            "query_rewrite": None,
            "positive_rewrite": "<rewrite>v</rewrite>",
            "query_instruction": "",
            "positive_instruction": "",
            "source": "CIRR",
            "origin": f"{sft / 'CIRR.json'}[1]",
        },
        {
            "query": {"text": "q", "images": [], "video": None},
            "positive": {"text": "p", "images": [], "video": None},
            "query_rewrite": "<rewrite>r</rewrite>",
            "positive_rewrite": None,
            "query_instruction": "",
            "positive_instruction": "",
            "source": "MSCOCO",
            "origin": f"{sft / 'MSCOCO.jsonl'}:1",
        },
    ]
    # The rows are valid model inputs as datasets returns them (every struct key, None video, [] images).
    for index, row in enumerate(dataset):
        for column in ("query", "positive"):
            parse_input(row[column], index)
    assert parse_input(dataset[1]["positive"], 0).video == frames

    # A list of files gives the same rows; the limit keeps the first records of each source.
    assert read_rime_sft([sft / "CIRR.json", sft / "MSCOCO.jsonl"], media_root=media).to_list() == dataset.to_list()
    limited = read_rime_sft(str(sft), media_root=str(media), max_samples_per_source=1)
    assert limited["source"] == ["CIRR", "MSCOCO"]
    assert limited[0]["query_rewrite"] == "<rewrite>a cat on a sofa</rewrite>"


def test_read_rime_sft_reads_ume_r1_sources_and_placeholder(tmp_path, media):
    path = write_json(
        tmp_path / "ume_sft.json",
        [
            {
                "dataset": "MSMARCO",
                "qry": side("<image>\nquery text" + GEN_PROMPT, image="blank.jpg"),
                "pos": side("doc"),
            },
            {"source": "NIGHTS", "qry": side("<image>\n" + GEN_PROMPT, image="images/cat.jpg"), "pos": side("x")},
            {"qry": side("no source"), "pos": side("<image>", image=["blank.jpg", "images/dog.png"])},
            {"data_source": "MSMARCO", "qry": side("second"), "pos": side("doc 2")},
        ],
    )
    dataset = read_rime_sft(path, media_root=media)
    assert dataset["source"] == ["MSMARCO", "NIGHTS", "ume_sft", "MSMARCO"]
    assert dataset[0]["query"] == {"text": "query text", "images": [], "video": None}
    assert dataset[1]["query"] == {"text": None, "images": [str(media / "images" / "cat.jpg")], "video": None}
    assert dataset[2]["positive"] == {"text": None, "images": [str(media / "images" / "dog.png")], "video": None}
    assert read_rime_sft(path, media_root=media, max_samples_per_source=1)["source"] == [
        "MSMARCO",
        "NIGHTS",
        "ume_sft",
    ]
    # Without placeholders to drop, blank.jpg is an ordinary image.
    kept = read_rime_sft(path, media_root=media, placeholder_images=())
    assert kept[0]["query"]["images"] == [str(media / "blank.jpg")]
    # A placeholder with nothing else is an empty item, named with its record.
    write_json(path, [{"qry": side("<image>", image="blank.jpg"), "pos": side("doc")}])
    with pytest.raises(ValueError, match=r"ume_sft\.json record 0 \(qry\): empty item"):
        read_rime_sft(path, media_root=media)


def test_sft_relative_paths_default_to_the_file_folder(tmp_path, media):
    path = write_json(media / "train.json", [{"qry": side("q", image="images/cat.jpg"), "pos": side("p")}])
    assert read_rime_sft(path)[0]["query"]["images"] == [str(media / "images" / "cat.jpg")]


def test_sft_missing_file_names_file_record_and_side(tmp_path, media):
    records = [{"qry": side("q"), "pos": side("p")} for _ in range(12)]
    records.append({"qry": side("q"), "pos": side("<image>", image="images/missing.jpg")})
    path = write_json(tmp_path / "RIME-SFT" / "CIRR.json", records)
    missing = os.path.join(str(media), "images", "missing.jpg")
    with pytest.raises(FileNotFoundError) as error:
        read_rime_sft(path, media_root=media)
    assert str(error.value) == f"{path} record 12 (pos): image file not found: {missing}"
    # check_files=False only resolves the path.
    assert read_rime_sft(path, media_root=media, check_files=False)[12]["positive"]["images"] == [missing]


def test_sft_video_file_and_bad_records(tmp_path, media):
    path = write_json(tmp_path / "v.json", [{"qry": side("q", video="videos/clip.mp4"), "pos": side("p")}])
    with pytest.raises(
        ValueError, match=r"v\.json record 0 \(qry\): video file .*clip\.mp4 is not supported; extract"
    ):
        read_rime_sft(path, media_root=media)
    write_json(path, [{"qry": side("q", video="frames/nope"), "pos": side("p")}])
    with pytest.raises(FileNotFoundError, match="video frame directory not found"):
        read_rime_sft(path, media_root=media, check_files=False)
    write_json(path, [{"qry": side("q")}])
    with pytest.raises(ValueError, match=r"record 0: missing 'pos'"):
        read_rime_sft(path, media_root=media)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_rime_sft(tmp_path / "absent.json")


def test_read_pairs_jsonl_with_negatives(tmp_path, media):
    frames = [str(media / "frames" / "vid_1" / f"frame_{i}.jpg") for i in (1, 2, 10)]
    cat, dog = str(media / "images" / "cat.jpg"), str(media / "images" / "dog.png")
    rows = [
        {
            "query": "a red car",
            "positive": {"text": "a car", "image": "images/cat.jpg"},
            "negatives": ["images/dog.png", {"video": "frames/vid_1"}],
            "negative_rewrites": ["<rewrite>dog</rewrite><gen_emb>", None],
            "query_instruction": "Find the photo:",
            "query_rewrite": "<rewrite>car</rewrite><gen_emb>",
            "source": "cars",
        },
        {"query": {"images": ["images/cat.jpg"]}, "positive": cat, "negative": "a truck", "negative_rewrite": "t"},
        {"query": "q", "positive": {"text": "p", "video": ["frames/vid_1/frame_2.jpg"]}, "ignored": 1},
    ]
    path = write_json(media / "pairs.jsonl", rows, lines=True)
    dataset = read_pairs(path)  # relative paths resolve against the file's folder
    assert dataset.column_names == [*COLUMNS, "negatives", "negative_rewrites"]
    assert dataset.to_list() == [
        {
            "query": {"text": "a red car", "images": [], "video": None},
            "positive": {"text": "a car", "images": [cat], "video": None},
            "query_rewrite": "<rewrite>car</rewrite>",
            "positive_rewrite": None,
            "query_instruction": "Find the photo:",
            "positive_instruction": None,
            "source": "cars",
            "origin": f"{path}:1",
            "negatives": [
                {"text": None, "images": [dog], "video": None},
                {"text": None, "images": [], "video": frames},
            ],
            "negative_rewrites": ["<rewrite>dog</rewrite>", None],
        },
        {
            "query": {"text": None, "images": [cat], "video": None},
            "positive": {"text": None, "images": [cat], "video": None},
            "query_rewrite": None,
            "positive_rewrite": None,
            "query_instruction": None,
            "positive_instruction": None,
            "source": "pairs",
            "origin": f"{path}:2",
            "negatives": [{"text": "a truck", "images": [], "video": None}],
            "negative_rewrites": ["t"],
        },
        {
            "query": {"text": "q", "images": [], "video": None},
            "positive": {"text": "p", "images": [], "video": [frames[1]]},
            "query_rewrite": None,
            "positive_rewrite": None,
            "query_instruction": None,
            "positive_instruction": None,
            "source": "pairs",
            "origin": f"{path}:3",
            "negatives": [],
            "negative_rewrites": [],
        },
    ]
    for index, row in enumerate(dataset):
        for item in [row["query"], row["positive"], *row["negatives"]]:
            parse_input(item, index)
    # Reading its own output (a Dataset) is the identity; the source argument fills rows without one.
    assert read_pairs(dataset, media_root=media).to_list() == dataset.to_list()
    assert read_pairs(path, source="mine")["source"] == ["cars", "mine", "mine"]


def test_read_pairs_without_negatives_and_in_memory(media):
    dataset = read_pairs([{"query": "q", "positive": "images/cat.jpg", "positive_instruction": ""}], media_root=media)
    assert dataset.column_names == list(COLUMNS)
    assert read_pairs([]).column_names == list(COLUMNS)  # an empty input keeps the schema
    assert dataset[0]["positive"]["images"] == [str(media / "images" / "cat.jpg")]
    assert dataset[0]["positive_instruction"] == "" and dataset[0]["source"] == "default"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"positive": "p"}, r"data row 1: missing 'query'"),
        ({"query": "q", "positive": None}, r"data row 1: missing 'positive'"),
        ({"query": "q", "positive": {"txt": "p"}}, r"data row 1 \(positive\): unknown key\(s\) \['txt'\]"),
        ({"query": "  ", "positive": "p"}, r"data row 1 \(query\): empty item"),
        ({"query": "q", "positive": 3}, r"data row 1 \(positive\): expected text"),
        ({"query": "q", "positive": "p", "negatives": ["n", {}]}, r"data row 1 \(negatives\[1\]\): empty item"),
        ({"query": "q", "positive": "p", "negative": "n", "negatives": ["n"]}, "either 'negative' or 'negatives'"),
        ({"query": "q", "positive": "p", "negatives": ["n"], "negative_rewrites": []}, "same length"),
        (
            {"query": "q", "positive": "p", "query_instruction": 1},
            r"data row 1 \(query_instruction\): expected a string",
        ),
    ],
)
def test_read_pairs_row_errors(media, row, message):
    with pytest.raises(ValueError, match=message):
        read_pairs([{"query": "fine", "positive": "fine"}, row], media_root=media)


def test_read_pairs_missing_image_names_row(tmp_path, media):
    path = write_json(tmp_path / "pairs.jsonl", [{"query": "q", "positive": "gone.jpg"}], lines=True)
    with pytest.raises(FileNotFoundError, match=r"pairs\.jsonl row 0 \(positive\): image file not found: .*gone\.jpg"):
        read_pairs(path, media_root=media)


def test_normalize_item_forms(media):
    cat = str(media / "images" / "cat.jpg")
    assert normalize_item(cat) == {"text": None, "images": [cat], "video": None}  # absolute paths are kept
    assert normalize_item(["images/cat.jpg"], media_root=media) == {"text": None, "images": [], "video": [cat]}
    assert normalize_item({"text": "t", "image": "images/cat.jpg", "images": ["images/cat.jpg"]}, media) == {
        "text": "t",
        "images": [cat, cat],
        "video": None,
    }
    with pytest.raises(ValueError, match="item: 'images' must be a path or a list of paths"):
        normalize_item({"images": [1]})


def test_read_rime_rl_flat_records(tmp_path, media):
    records = [
        {
            "qry_text": "<image>\nRepresent the given image." + GEN_PROMPT,
            "qry_image": "images/cat.jpg",
            "qry_video": "",
            "pos_text": "A cat.",
            "pos_image": "blank.jpg",
            "pos_video": "",
            "dataset": "MSCOCO_i2t",
            "solution": "cat",
        },
        {
            "qry_text": "<video>\nWhat happens?",
            "qry_image": "",
            "qry_video": "frames/vid_1",
            "pos_text": "",
            "pos_image": ["images/dog.png"],
            "pos_video": None,
            "dataset": "MSR-VTT",
            "solution": None,
        },
    ]
    path = write_json(tmp_path / "RIME-RL" / "RIME-rl.json", records)
    data = read_rime_rl(path, media_root=media)
    assert data.column_names == [*COLUMNS, "solution"]
    first, second = data[0], data[1]
    assert first["query"] == {
        "text": "Represent the given image.",
        "images": [str(media / "images/cat.jpg")],
        "video": None,
    }
    assert first["positive"] == {"text": "A cat.", "images": [], "video": None}  # blank.jpg dropped
    assert (first["source"], first["solution"], first["query_instruction"]) == ("MSCOCO_i2t", "cat", "")
    assert [os.path.basename(f) for f in second["query"]["video"]] == ["frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]
    assert second["positive"]["images"] == [str(media / "images/dog.png")] and second["solution"] is None
    with pytest.raises(FileNotFoundError, match="record 0 \\(qry\\)"):
        read_rime_rl(
            write_json(tmp_path / "bad.json", [dict(records[0], qry_image="images/none.jpg")]), media_root=media
        )
