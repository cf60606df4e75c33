"""Refine-RL trainer: prompts, embeddings, anchors, GRPO steps (full, LoRA, beta > 0), saving."""

import copy

import pytest
import torch

from transformers_rime import RimeEncoder, RimeForEmbedding
from transformers_rime.testing import color_object_pairs, tiny_rime_model, tiny_rime_processor


pytest.importorskip("trl", reason="Refine-RL needs the rl extra")  # installed by the dev extra, so CI runs these

from transformers_rime.fingerprints import item_fingerprint  # noqa: E402
from transformers_rime.training import RimeRefineRLConfig, RimeRefineRLTrainer  # noqa: E402
from transformers_rime.training.rollouts import PairedRepeatSampler, gen_embedding_ids  # noqa: E402
from transformers_rime.training.trainer_refine_rl import check_trl_version  # noqa: E402


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        beta=0.0,
        seed=0,
    )
    values.update(overrides)
    return RimeRefineRLConfig(**values)


@pytest.fixture(scope="module")
def processor():
    return tiny_rime_processor()


def make_trainer(tmp_path, processor, rows=None, peft_config=None, eval_rows=None, **overrides):
    model = tiny_rime_model(processor=processor)
    rows = rows if rows is not None else color_object_pairs(8, with_images=True)
    return RimeRefineRLTrainer(
        model,
        args=make_args(tmp_path, **overrides),
        train_dataset=rows,
        eval_dataset=eval_rows,
        processing_class=processor,
        peft_config=peft_config,
    )


def rollout_rows(trainer, count):
    return [trainer._with_prompt(trainer.train_dataset[i]) for i in range(count)]


def test_rollout_prompts_are_the_processors_gen_prompts(tmp_path, processor):
    """TRL renders the conversations the trainer builds; the tokens must be RimeProcessor's gen-mode prompt."""
    rows = color_object_pairs(4, with_images=True)
    trainer = make_trainer(tmp_path, processor, rows=rows, symmetric_rollouts=True)
    trl_rows = rollout_rows(trainer, 4)  # pair 0 query, pair 0 document, pair 1 query, pair 1 document
    from trl.data_utils import prepare_multimodal_messages

    prompts = [prepare_multimodal_messages(r["prompt"], images=r["images"]) for r in trl_rows]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    for ids, row in zip(prompt_ids, trl_rows):
        pair = rows[row["pair_index"]]
        item, role = (pair["query"], "query") if row["side"] == "query" else (pair["positive"], "document")
        expected = processor.process_inputs([item], mode="gen", role=role)
        assert list(ids) == expected["input_ids"][0].tolist()


def test_gen_embedding_ids_append_gen_emb_to_unfinished_rollouts():
    assert gen_embedding_ids([1], [4, 9], gen_emb_id=9, end_ids=[0, 2]) == ([1, 4, 9], True)
    assert gen_embedding_ids([1], [4, 2], gen_emb_id=9, end_ids=[0, 2]) == ([1, 4, 9], False)
    assert gen_embedding_ids([1], [4, 5], gen_emb_id=9, end_ids=[0, 2]) == ([1, 4, 5, 9], False)  # ran out
    assert gen_embedding_ids([1], [], gen_emb_id=9, end_ids=[0]) == ([1, 9], False)


def test_item_fingerprint_compares_content_not_identity():
    from PIL import Image

    from transformers_rime.models.rime.inputs_rime import RimeInput

    def item(rgb, text="a red car", **kwargs):
        return RimeInput(text=text, images=[Image.new("RGB", (8, 8), rgb)], **kwargs)

    assert item_fingerprint(item((255, 0, 0))) == item_fingerprint(item((255, 0, 0)))  # two equal images
    assert item_fingerprint(item((255, 0, 0))) != item_fingerprint(item((254, 0, 0)))
    assert item_fingerprint(item((255, 0, 0))) != item_fingerprint(item((255, 0, 0), text="a red cat"))
    assert item_fingerprint(RimeInput(images=["a.png"])) != item_fingerprint(RimeInput(images=["b.png"]))
    assert item_fingerprint(RimeInput(text="x", video=[])) != item_fingerprint(RimeInput(text="x"))


def test_rollout_embeddings_are_the_models_gen_embeddings(tmp_path, processor):
    """One batched forward over prompt + rollout gives what RimeForEmbedding reads for each sequence alone."""
    trainer = make_trainer(tmp_path, processor, symmetric_rollouts=True)  # text queries, image documents
    rows = rollout_rows(trainer, 4)
    from trl.data_utils import prepare_multimodal_messages

    prompts = [prepare_multimodal_messages(r["prompt"], images=r["images"]) for r in rows]
    trainer._tokenize_prompts(prompts)
    gen_id, end_id = processor.gen_emb_token_id, processor.end_of_turn_token_ids[0]
    completions = [[11, 12, gen_id], [13, end_id], [14, 15, 16], [17, gen_id]]  # finished, ended, ran out, finished
    sequences = [
        gen_embedding_ids(p, c, gen_id, [end_id])[0] for p, c in zip(trainer._prompt_encoding.prompt_ids, completions)
    ]
    batched = trainer._rollout_embeddings(sequences)
    model = trainer.rime_model
    for row, (row_data, sequence) in enumerate(zip(rows, sequences)):
        item, _, role = trainer._rollout_item(row_data)
        alone = processor.process_inputs([item], mode="gen", role=role)
        ids = torch.tensor([sequence])
        inputs = {k: v for k, v in alone.items() if k in ("pixel_values", "image_grid_thw")}
        with torch.no_grad():
            out = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                mm_token_type_ids=(ids == processor.image_token_id).long(),
                return_gen_embeddings=True,
                **inputs,
            )
        torch.testing.assert_close(batched[row], out.gen_embeddings[0], atol=1e-5, rtol=1e-4)


def test_frozen_anchors_carry_no_gradient_and_stay_put_while_the_policy_moves(tmp_path, processor):
    rows = color_object_pairs(8, with_images=True)
    trainer = make_trainer(tmp_path, processor, rows=rows, learning_rate=1e-2, max_steps=2)
    batch = rollout_rows(trainer, 4)
    keys, before = trainer._anchor_embeddings(batch)
    again = trainer._anchor_embeddings(batch)[1]
    assert not before.requires_grad
    torch.testing.assert_close(before, again, rtol=0, atol=0)  # the same within a step
    initial = copy.deepcopy(trainer.rime_model)
    trainer.train()
    moved = max((p - q).abs().max() for p, q in zip(trainer.rime_model.parameters(), initial.parameters()))
    assert moved > 1e-4  # the policy changed ...
    torch.testing.assert_close(trainer._anchor_embeddings(batch)[1], before)  # ... the frozen anchors did not
    trainer.args.anchor_source = "online"
    online = trainer._anchor_embeddings(batch)[1]
    assert (online - before).abs().max() > 1e-5


@pytest.mark.parametrize(
    ("name", "use_lora", "beta"),
    [("full, beta>0", False, 0.04), ("lora, beta>0", True, 0.04), ("lora, beta=0", True, 0.0)],
)
def test_grpo_steps_run_on_an_image_text_model(tmp_path, processor, name, use_lora, beta):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if use_lora else None
    # 8 rows per batch = 2 pairs x 2 sides x 2 rollouts: two candidates per pool, so rewards differ within groups
    trainer = make_trainer(
        tmp_path,
        processor,
        peft_config=peft_config,
        beta=beta,
        symmetric_rollouts=True,
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-4,
    )
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and (not use_lora or all("lora" in n for n in trainable))
    result = trainer.train()
    assert result.global_step == 3
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 3
    for key in (
        "rewards/anchor_retrieval_reward/mean",
        "rewards/format_reward/mean",
        "rollouts/finished",
        "rollouts/anchor_top1",
        "completions/mean_length",
    ):
        assert all(key in h for h in logs), key
    assert all(0.0 <= h["rewards/anchor_retrieval_reward/mean"] <= 1.0 for h in logs)
    assert ("kl" in logs[-1]) == (beta > 0)
    changed = [n for n, p in trainer.model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert changed, f"{name}: no trainable weight moved"


def test_saved_model_loads_like_any_rime_checkpoint(tmp_path, processor):
    from peft import LoraConfig

    trainer = make_trainer(
        tmp_path / "run",
        processor,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]),
        learning_rate=1e-2,
        max_steps=1,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    texts = ["a red car", "a kitten"]
    with torch.no_grad():
        expected = trainer.rime_model.eval()(**processor(text=texts, mode="disc", return_tensors="pt")).embeddings
    encoder = RimeEncoder.from_pretrained(tmp_path / "final")
    assert isinstance(encoder.model, RimeForEmbedding)
    loaded = encoder.encode(texts, mode="disc", convert_to="tensor")
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-4)  # the adapter is merged in
    # the merged copy generates on its own weights (TRL's patched forward would route it to the training model)
    out = trainer.merged_model().generate_embeddings(
        **processor(text=texts, mode="gen", return_tensors="pt"), max_new_tokens=3
    )
    assert out.embeddings.shape == (2, expected.shape[1])


def test_paired_sampler_keeps_both_sides_of_a_pair_in_one_generation_batch():
    order = list(PairedRepeatSampler(num_pairs=4, num_generations=2, pairs_per_batch=2, repeat_count=2, seed=3))
    assert len(order) == 4 * 2 * 2 * 2
    batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    for batch in batches:
        pairs = {row // 2 for row in batch}
        assert sorted(batch) == sorted(r for p in pairs for r in (2 * p, 2 * p, 2 * p + 1, 2 * p + 1))
    assert batches[0] == batches[1]  # repeat_count: the same generation batch again (num_iterations)


def test_dataset_negatives_join_the_candidate_pool(tmp_path, processor):
    rows = [dict(r, negatives=["an unrelated thing", "another one"]) for r in color_object_pairs(4)]
    trainer = make_trainer(tmp_path, processor, rows=rows)
    keys, anchors = trainer._anchor_embeddings(rollout_rows(trainer, 2))
    # 2 positives + the 2 negatives both rows share, each embedded once
    assert len(keys) == anchors.shape[0] == 4 and {role for role, _ in keys} == {"document"}
    trainer.args.use_dataset_negatives = False
    assert len(trainer._anchor_embeddings(rollout_rows(trainer, 2))[0]) == 2


def test_a_candidate_listed_twice_never_competes_with_itself(tmp_path, processor):
    """A row's negative that is another row's positive joins the pool once: it never splits its own reward."""
    pairs = color_object_pairs(4)
    rows = [dict(r, negatives=[pairs[(i + 1) % 4]["positive"]]) for i, r in enumerate(pairs)]
    trainer = make_trainer(tmp_path, processor, rows=rows, rewards=["anchor_retrieval"])
    batch = [trainer._with_prompt({"pair_index": i, "side": "query"}) for i in range(4)]
    keys, anchors = trainer._anchor_embeddings(batch)
    assert len(keys) == len(set(keys)) == 4
    trainer._tokenize_prompts([row["prompt"] for row in batch])
    columns = trainer._embedding_columns(
        batch, [[*ids, processor.gen_emb_token_id] for ids in trainer._prompt_encoding.prompt_ids]
    )
    positions = columns["positive_index"]
    assert sorted(positions) == [0, 1, 2, 3]
    for row, position in zip(batch, positions):
        torch.testing.assert_close(columns["anchor_embeddings"][0][position], anchors[position])
        assert keys[position] == trainer._candidate_key(row["pair_index"], "positive")
    # a rollout whose embedding is its target's anchor: a second copy of the target would cap the reward at 1/2
    from transformers_rime.rewards import anchor_retrieval_reward

    rewards = anchor_retrieval_reward([anchors[p] for p in positions], anchors, positions, temperature=1e-3)
    assert min(rewards) > 0.5


def test_config_and_version_errors(tmp_path, processor):
    with pytest.raises(ValueError, match="Unknown reward"):
        make_args(tmp_path, rewards=["format", "recall"])
    with pytest.raises(ValueError, match="symmetric_rollouts"):
        make_args(tmp_path, rewards=["rollout_contrast"])
    with pytest.raises(ValueError, match="anchor_source"):
        make_args(tmp_path, anchor_source="moving")
    with pytest.raises(ImportError, match=r"trl>=1.16.0,<1.17.0"):
        check_trl_version("1.17.0")
    check_trl_version("1.16.3")
    with pytest.raises(ValueError, match="RimeProcessor"):
        RimeRefineRLTrainer(tiny_rime_model(processor=processor), args=make_args(tmp_path), train_dataset=[])
    with pytest.raises(ValueError, match="row 1, column 'positive'"):
        make_trainer(
            tmp_path, processor, rows=[{"query": "a", "positive": "b"}, {"query": "a", "positive": {"txt": 1}}]
        )


# ----------------------------------------------------------------------------- checkpoints, resuming, evaluation


def _rl_run(output_dir, use_lora=False, eval_rows=None, **overrides):
    """A Refine-RL trainer over a model with non-default RIME settings (its own processor, which adopts them)."""
    from peft import LoraConfig

    processor = tiny_rime_processor()
    model = tiny_rime_model(processor=processor, max_new_tokens=7, query_instruction="Find the match:")
    settings = {"max_steps": 2, "save_strategy": "steps", "save_steps": 1, "learning_rate": 1e-2, **overrides}
    return RimeRefineRLTrainer(
        model,
        args=make_args(output_dir, **settings),
        train_dataset=color_object_pairs(8, with_images=True),
        eval_dataset=eval_rows,
        processing_class=processor,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if use_lora else None,
    )


def _embeddings(model, processor, items):
    with torch.no_grad():
        disc = model.eval()(**processor.process_inputs(items, "disc")).embeddings
        gen = model.generate_embeddings(**processor.process_inputs(items, "gen")).embeddings
    return disc, gen


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_every_checkpoint_is_a_full_rime_checkpoint(tmp_path, use_lora):
    """checkpoint-N reloads with the trained model's settings and embeddings, like save_model's output."""
    import json

    trainer = _rl_run(tmp_path, use_lora=use_lora)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "rime"
    assert (checkpoint / "modules.json").is_file() and (checkpoint / "processor_config.json").is_file()
    assert (checkpoint / "adapter" / "adapter_config.json").is_file() == use_lora
    encoder = RimeEncoder.from_pretrained(checkpoint, device="cpu")
    assert encoder.model.config.max_new_tokens == 7
    assert encoder.processor.query_instruction == "Find the match:"
    items = [
        "a red car",
        {"text": "an automobile", "image": color_object_pairs(1, with_images=True)[0]["positive"]["image"]},
    ]
    disc, gen = _embeddings(trainer.merged_model(), trainer.processing_class, items)
    torch.testing.assert_close(encoder.encode(items, convert_to="tensor"), disc, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode(items, mode="gen", convert_to="tensor"), gen, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path, use_lora):
    from transformers import TrainerCallback

    whole = _rl_run(tmp_path / "whole", use_lora=use_lora)
    whole.train()

    class AtStart(TrainerCallback):  # the weights training resumes from, once the checkpoint is loaded
        def on_train_begin(self, args, state, control, **kwargs):
            self.weights = {k: v.clone() for k, v in resumed.merged_model().state_dict().items()}

    start = AtStart()
    resumed = _rl_run(tmp_path / "resumed", use_lora=use_lora)
    resumed.add_callback(start)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-1"))
    saved = RimeForEmbedding.from_pretrained(tmp_path / "whole" / "checkpoint-1").state_dict()
    assert start.weights.keys() == saved.keys()
    assert all(torch.equal(start.weights[k], saved[k]) for k in saved)
    assert resumed.state.global_step == 2
    final, expected = resumed.merged_model().state_dict(), whole.merged_model().state_dict()
    assert max((final[k] - expected[k]).abs().max() for k in final) < 1e-6  # the same second step


def test_lora_cannot_resume_from_a_merged_export(tmp_path):
    trainer = _rl_run(tmp_path / "run", use_lora=True, save_strategy="no", max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "export"))
    assert not (tmp_path / "export" / "adapter").exists()
    with pytest.raises(ValueError, match="no LoRA adapter"):
        _rl_run(tmp_path / "again", use_lora=True).train(resume_from_checkpoint=str(tmp_path / "export"))


def test_evaluation_keeps_the_pairs_of_symmetric_rollouts_together(tmp_path, processor):
    """TRL's eval sampler shuffles single rows; with symmetric rollouts each pair's two sides share a batch, so
    UME-R1's reward (and the anchor pools) see evaluation batches built like training's."""
    rows = color_object_pairs(7, with_images=True)
    settings = dict(symmetric_rollouts=True, per_device_train_batch_size=8, per_device_eval_batch_size=8)
    rewards = ["format", "anchor_retrieval", "rollout_contrast"]
    trainer = make_trainer(tmp_path, processor, rows=rows[:4], eval_rows=rows[4:], rewards=rewards, **settings)
    order = list(trainer._get_eval_sampler(trainer.eval_dataset))
    assert len(order) == 3 * 2 * 2 and set(order) == set(range(6))  # 3 pairs x 2 sides x 2 rollouts
    for start in range(0, len(order), 8):  # every eval batch holds both sides of its pairs, twice each (the last: 4)
        batch = order[start : start + 8]
        assert sorted(batch) == sorted(r for p in {row // 2 for row in batch} for r in (2 * p, 2 * p + 1) * 2)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_rewards/rollout_contrast_reward/mean"] <= 1.0
    with pytest.raises(ValueError, match="multiple of 2 x num_generations_eval"):
        make_trainer(
            tmp_path, processor, rows=rows[:4], eval_rows=rows[4:], **{**settings, "per_device_eval_batch_size": 6}
        )


def test_rollouts_stop_on_the_tokens_inference_stops_on(tmp_path, processor):
    """`<|endoftext|>` ends a rewrite at inference although the backbone's generation config does not list it: it
    must end a rollout too."""
    trainer = make_trainer(tmp_path, processor)
    end_of_text = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert end_of_text in trainer.rime_model.stop_token_ids()
    assert end_of_text not in [trainer.rime_model.vlm.generation_config.eos_token_id]  # restored after TRL's setup
    assert set(trainer.eos_token_ids) == {processor.gen_emb_token_id, *trainer.rime_model.stop_token_ids()}
    assert trainer.generation_config.eos_token_id == trainer.eos_token_ids


def test_the_best_checkpoint_is_loaded_back_at_the_end(tmp_path):
    trainer = _rl_run(
        tmp_path,
        eval_rows=color_object_pairs(2),
        max_steps=3,
        eval_strategy="steps",
        eval_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="reward",
        greater_is_better=False,  # the worst reward wins, so the best checkpoint is rarely the last one
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-3")  # an earlier model than the last one
    saved = RimeForEmbedding.from_pretrained(best).state_dict()
    loaded = trainer.rime_model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_gathered_backbone_checkpoint_is_rewritten_as_a_rime_checkpoint(tmp_path):
    """Under DeepSpeed / FSDP, TRL's save gathers the sharded weights into a backbone checkpoint; the trainer then
    rewrites it in RIME's layout. Here TRL's save runs on one CPU process, where it writes the same folder."""
    from trl import GRPOTrainer

    from transformers_rime.training.checkpoints import is_rime_checkpoint, rewrite_as_rime_checkpoint

    trainer = _rl_run(tmp_path / "run", save_strategy="no", max_steps=1)
    trainer.train()
    folder = tmp_path / "gathered"
    GRPOTrainer.save_model(trainer, str(folder), _internal_call=True)  # what TRL writes: the policy backbone
    assert not is_rime_checkpoint(folder)
    assert rewrite_as_rime_checkpoint(folder, trainer.rime_model.config, trainer.processing_class)
    assert is_rime_checkpoint(folder) and (folder / "modules.json").is_file()
    encoder = RimeEncoder.from_pretrained(folder, device="cpu")
    assert encoder.model.config.max_new_tokens == 7 and encoder.processor.query_instruction == "Find the match:"
    items = ["a red car", "an automobile, crimson"]
    disc, gen = _embeddings(trainer.rime_model, trainer.processing_class, items)
    torch.testing.assert_close(encoder.encode(items, convert_to="tensor"), disc, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode(items, mode="gen", convert_to="tensor"), gen, atol=1e-5, rtol=0)
    (tmp_path / "no-weights").mkdir()  # DeepSpeed ZeRO-3 without gathering writes no weights file
    assert not rewrite_as_rime_checkpoint(tmp_path / "no-weights", trainer.rime_model.config, trainer.processing_class)
