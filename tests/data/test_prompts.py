"""`infer_prompt` recovers the generation prompt from RIME-Train / UME-R1 data, and `rime export --prompt-from`."""

from __future__ import annotations

import json
import logging

import pytest

from transformers_rime import RimeConfig, RimeEncoder
from transformers_rime.cli import main
from transformers_rime.data import count_prompts, infer_prompt
from transformers_rime.models.rime.configuration_rime import format_gen_instruction
from transformers_rime.testing import tiny_rime_config, tiny_rime_processor, write_published_checkpoint


INSTRUCTION = "Summarise the input inside <sum> </sum>, then emit <gen_emb>."
OTHER = "Describe the input in <sum> </sum> and end with <gen_emb>."
UME_R1_INSTRUCTION = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. First output "
    "the thinking process in <think> </think> tags and then summarize the entire input in a word or sentence. "
    "Finally, use the <gen_emb> tag to represent the entire input."
)


def sft_side(text, instruction=INSTRUCTION, rewrite="<sum>a cat on a sofa</sum><gen_emb>", image="blank.jpg"):
    turns = [{"from": "human", "value": f"<image>\n{text}\n<disc_emb>\n{instruction}"}]
    if rewrite is not None:
        turns.append({"from": "gpt", "value": rewrite})
    return {"image": image, "conversations": turns}


def sft_record(index, instruction=INSTRUCTION):
    return {
        "qry": sft_side(f"Represent the given image: what is in photo {index}?", instruction, image="images/cat.jpg"),
        "pos": sft_side(f"A photo of cat {index}.", instruction),
    }


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_sft_jsonl_recovers_the_majority_prompt_and_reports_the_runner_up(tmp_path, caplog):
    records = [sft_record(i) for i in range(3)] + [sft_record(3, OTHER)]
    data = write_jsonl(tmp_path / "RIME-SFT.jsonl", records)  # the images do not exist: media are never opened
    with caplog.at_level(logging.INFO, logger="transformers_rime"):
        found = infer_prompt(data)
    assert found == {"gen_instruction": INSTRUCTION, "rewrite_start": "<sum>", "rewrite_end": "</sum>"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(repr(OTHER) in message and "(2)" in message for message in warnings)
    assert any("6 of 8 prompts in 4 records" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    counts = count_prompts(data)
    assert counts["instructions"] == {INSTRUCTION: 6, OTHER: 2}
    assert counts["rewrite_starts"] == {"<sum>": 8} and counts["rewrite_ends"] == {"</sum>": 8}
    assert counts["records"] == 4
    assert infer_prompt(counts) == found  # counts in, the same fields out


def test_ume_r1_assistant_turns_give_think_and_answer(tmp_path):
    rewrite = "<think>The image shows a cat.</think><answer>a cat on a sofa</answer><gen_emb><|im_end|>\n"
    side = sft_side("What is shown?", UME_R1_INSTRUCTION, rewrite)
    data = tmp_path / "ume.json"
    data.write_text(json.dumps([{"qry": side, "pos": side}] * 2))  # a JSON list file
    assert infer_prompt(data) == {
        "gen_instruction": UME_R1_INSTRUCTION,
        "rewrite_start": "<think>",
        "rewrite_end": "</answer>",
    }


def test_messages_with_role_and_content_are_read():
    side = {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"A cat.\n<disc_emb>\n{OTHER}"}]},
            {"role": "assistant", "content": "<sum>a cat</sum> <gen_emb>"},
        ]
    }
    assert infer_prompt([{"query": side, "positive": side}]) == {
        "gen_instruction": OTHER,
        "rewrite_start": "<sum>",
        "rewrite_end": "</sum>",
    }


def test_rl_records_recover_the_instruction_without_tags(tmp_path, caplog):
    records = [
        {
            "qry_text": f"<image>\nRepresent the given image. {i} \n<disc_emb>\n{INSTRUCTION}",
            "qry_image": "images/cat.jpg",
            "qry_video": "",
            "pos_text": f"A cat on a sofa {i}.",
            "pos_image": "",
            "pos_video": "",
            "dataset": "MSCOCO_i2t",
            "solution": "A cat on a sofa.",
        }
        for i in range(3)
    ]
    data = tmp_path / "RIME-rl.json"
    data.write_text(json.dumps(records))
    with caplog.at_level(logging.INFO, logger="transformers_rime"):
        assert infer_prompt(data) == {"gen_instruction": INSTRUCTION}
    assert any("rewrite_start / rewrite_end not recovered" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_folder_a_list_of_paths_and_a_list_of_records(tmp_path, caplog):
    # RIME-Train's layout: RIME-SFT/<Dataset>.json and RIME-RL/RIME-rl.json, searched recursively
    root = tmp_path / "RIME-Train"
    sft, rl, hidden = root / "RIME-SFT", root / "RIME-RL", root / ".cache" / "huggingface"
    for folder in (sft, rl, hidden):
        folder.mkdir(parents=True)
    write_jsonl(sft / "A.jsonl", [sft_record(0), sft_record(1)])
    (sft / "B.json").write_text(json.dumps([sft_record(2, OTHER)]))
    (sft / "notes.txt").write_text("not data")
    (rl / "RIME-rl.json").write_text(
        json.dumps([{"qry_text": f"A cat.\n<disc_emb>\n{INSTRUCTION}", "pos_text": "A cat."}])
    )
    (hidden / "broken.json").write_text("{not json")
    (root / "info.json").write_text('{\n  "name": "RIME-Train"\n}\n')  # an object, not records: skipped
    expected = {"gen_instruction": INSTRUCTION, "rewrite_start": "<sum>", "rewrite_end": "</sum>"}
    with caplog.at_level(logging.WARNING, logger="transformers_rime"):
        assert infer_prompt(root) == expected
    assert any("Skipping" in r.getMessage() and "info.json" in r.getMessage() for r in caplog.records)
    assert not any("broken.json" in r.getMessage() for r in caplog.records)
    counts = count_prompts(root)
    assert counts["records"] == 4 and counts["instructions"] == {INSTRUCTION: 5, OTHER: 2}
    assert infer_prompt(sft / "B.json")["gen_instruction"] == OTHER
    assert infer_prompt([str(sft / "A.jsonl"), sft / "B.json"]) == expected
    assert infer_prompt([sft_record(0), sft_record(1, OTHER), sft_record(2, OTHER)])["gen_instruction"] == OTHER


def test_data_without_a_disc_emb_prompt_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "a red car", "positive": "car.jpg"}])
    with pytest.raises(ValueError, match=r"pairs\.jsonl.*<disc_emb>"):
        infer_prompt(data)
    disc_only = {"qry": sft_side("A cat.", instruction="", rewrite=None), "pos": sft_side("A dog.", "", None)}
    with pytest.raises(ValueError, match="the given records"):
        infer_prompt([disc_only])
    with pytest.raises(FileNotFoundError, match="missing"):
        infer_prompt(tmp_path / "missing")


def test_the_rendered_gen_prompt_ends_with_the_datas_own_text():
    records = [sft_record(0)]
    data_tail = records[0]["qry"]["conversations"][0]["value"].split("<disc_emb>\n", 1)[1]
    found = infer_prompt(records)
    config = RimeConfig(**found)
    rendered = format_gen_instruction(
        config.gen_instruction, config.rewrite_start, config.rewrite_end, config.gen_emb_token
    )
    assert rendered == data_tail
    processor = tiny_rime_processor()
    processor.adopt_config(tiny_rime_config(processor=processor, **found))
    prompt = processor.render_prompt("What is in photo 0?", 0, "gen", None)
    assert prompt.split("<disc_emb>\n", 1)[1].startswith(data_tail + "<|im_end|>\n<|im_start|>assistant\n")
    # disc mode is unchanged by the gen prompt
    assert processor.render_prompt("What is in photo 0?", 0, "disc", None).endswith("<disc_emb>\n<|im_end|>\n")


def test_rime_export_prompt_from_writes_the_recovered_prompt(tmp_path, capsys):
    published = write_published_checkpoint(tmp_path / "published")
    data = write_jsonl(tmp_path / "data.jsonl", [sft_record(0), sft_record(1), sft_record(2, OTHER)])
    output = tmp_path / "export"
    assert main(["export", "--model", str(published), "--output-dir", str(output), "--prompt-from", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"recovered gen_instruction {INSTRUCTION!r}, tags <sum> </sum> from 3 records" in out
    encoder = RimeEncoder.from_pretrained(output, device="cpu")
    config = encoder.model.config
    assert (config.gen_instruction, config.rewrite_start, config.rewrite_end) == (INSTRUCTION, "<sum>", "</sum>")
    assert encoder.processor.gen_instruction == INSTRUCTION
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "a", "positive": "b"}])
    args = ["export", "--model", str(published), "--output-dir", str(tmp_path / "x"), "--prompt-from", str(bad)]
    assert main(args) == 2
    assert "bad.jsonl" in capsys.readouterr().err
