"""train_hf.py: the stage switch inside one Trainer.train(), resume, DDP, presets, and the exported folder."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import train_hf
from kvcap.demo.corpus import generate_corpus
from kvcap.training.arguments import ModelArguments, parse_arguments
from kvcap.training.monitor import DiversityMonitorCallback
from kvcap.training.stages import LORA, PROJECTOR, stage_parameter_groups
from modeling_kvcap import PROJECTOR_TYPES, KVCapConfig
from modeling_kvcap.configuration_kvcap import MODEL_SETTINGS

from .conftest import REPO_ROOT, run_argv, run_in_clean_interpreter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, num_train=16, num_val=4, seed=0)
    return root


class StepRecorder(TrainerCallback):
    """Per optimizer step: which roles had gradients, each group's learning rate, and LoRA weight snapshots."""

    def __init__(self):
        self.steps: list[dict] = []
        self.micro_batches = 0

    def on_substep_end(self, args, state, control, **kwargs):
        self.micro_batches += 1

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.micro_batches += 1
        groups = stage_parameter_groups(model)
        self.steps.append(
            {
                "step": state.global_step,
                "grads": {role: [param.grad is not None for _, param in named] for role, named in groups.items()},
                "trainable": {role: [param.requires_grad for _, param in named] for role, named in groups.items()},
                "lr": {group["name"]: group["lr"] for group in optimizer.param_groups},
                "lora": torch.cat([param.detach().flatten().clone() for _, param in groups[LORA]]),
            }
        )


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().clone() for role, named in stage_parameter_groups(model).items() for name, param in named
    }


@pytest.mark.parametrize(("batch_size", "accumulation"), [(4, 1), (2, 2)])
def test_one_train_call_runs_stage_one_then_stage_two(tiny_backbones, corpus, tmp_path, batch_size, accumulation):
    argv = run_argv(
        tiny_backbones,
        corpus,
        tmp_path / "run",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
    )
    run = train_hf.prepare_run(argv)
    recorder = StepRecorder()
    run.trainer.add_callback(recorder)
    lora_params = [param for _, param in stage_parameter_groups(run.trainer.model)[LORA]]
    lora_before = torch.cat([param.detach().flatten().clone() for param in lora_params])
    run.trainer.train()

    schedule = run.trainer.stage_callback.schedule
    assert (schedule.stage1_steps, schedule.stage2_steps) == (4, 4)  # 16 clips / 4 per optimizer step
    assert [entry["step"] for entry in recorder.steps] == list(range(8))
    for entry in recorder.steps:
        stage = 1 if entry["step"] < 4 else 2
        assert all(entry["grads"][PROJECTOR]) and all(entry["trainable"][PROJECTOR])
        if stage == 1:
            assert not any(entry["grads"][LORA]), "LoRA gets no gradient in stage 1"
        else:
            assert all(entry["grads"][LORA]), "every LoRA matrix gets a gradient in stage 2"
        assert all(entry["trainable"][LORA]) == (stage == 2)
        assert entry["lr"][PROJECTOR] == pytest.approx(schedule.learning_rate(entry["step"], PROJECTOR))
        assert entry["lr"][LORA] == pytest.approx(schedule.learning_rate(entry["step"], LORA))
        assert (entry["lr"][LORA] == 0) == (stage == 1)
    peak_stage1 = max(entry["lr"][PROJECTOR] for entry in recorder.steps[:4])
    peak_stage2 = max(entry["lr"][PROJECTOR] for entry in recorder.steps[4:])
    assert peak_stage1 == pytest.approx(1e-3) and peak_stage2 == pytest.approx(1e-3)
    # LoRA stays untouched through stage 1 and moves in stage 2.
    assert torch.equal(recorder.steps[4]["lora"], lora_before)
    lora_after = torch.cat([param.detach().flatten() for param in lora_params])
    assert not torch.equal(lora_after, lora_before)
    assert recorder.micro_batches == 2 * 16 // batch_size  # every clip of both epochs, in micro-batches
    logged = [entry for entry in run.trainer.state.log_history if "loss" in entry]
    assert [entry["stage"] for entry in logged] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [entry["learning_rate_lora"] for entry in logged[:4]] == [0.0] * 4


def test_resume_in_stage_two_equals_an_uninterrupted_run(tiny_backbones, corpus, tmp_path):
    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                control.should_training_stop = True

    common = {"save_strategy": "steps", "save_steps": 1, "lora_dropout": 0.05}
    uninterrupted = train_hf.prepare_run(run_argv(tiny_backbones, corpus, tmp_path / "full", **common))
    uninterrupted.trainer.train()

    killed = train_hf.prepare_run(run_argv(tiny_backbones, corpus, tmp_path / "resumed", **common))
    killed.trainer.add_callback(StopAt())
    killed.trainer.train()
    assert killed.trainer.state.global_step == 6
    checkpoint = tmp_path / "resumed" / "checkpoint-6"
    assert checkpoint.is_dir()

    # A save cut short after the last complete one (no trainer_state.json) is passed over by `true`.
    (tmp_path / "resumed" / "checkpoint-7").mkdir()
    argv = run_argv(tiny_backbones, corpus, tmp_path / "resumed", resume_from_checkpoint="true", **common)
    resumed = train_hf.prepare_run(argv)
    assert resumed.training_args.resume_from_checkpoint == str(checkpoint)
    recorder = StepRecorder()
    resumed.trainer.add_callback(recorder)
    resumed.trainer.train(resume_from_checkpoint=resumed.training_args.resume_from_checkpoint)
    assert [entry["step"] for entry in recorder.steps] == [6, 7]
    assert all(all(entry["trainable"][LORA]) and all(entry["grads"][LORA]) for entry in recorder.steps)
    schedule = resumed.trainer.stage_callback.schedule
    assert schedule.learning_rate(6, LORA) > 0
    assert recorder.steps[0]["lr"][LORA] == pytest.approx(schedule.learning_rate(6, LORA))

    expected, got = trainable_state(uninterrupted.trainer.model), trainable_state(resumed.trainer.model)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_ddp_with_two_processes_matches_one_process_with_the_global_batch(tiny_backbones, corpus, tmp_path):
    common = {"save_strategy": "no", "final_eval": False}
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single = run_argv(tiny_backbones, corpus, single_dir, per_device_train_batch_size=4, **common)
    ddp = run_argv(tiny_backbones, corpus, ddp_dir, per_device_train_batch_size=2, **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for argv, launcher in (
        (single, [sys.executable, "train_hf.py"]),
        (
            ddp,
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                "kvcap/configs/accelerate/cpu_ddp.yaml",
                "train_hf.py",
            ],
        ),
    ):
        completed = subprocess.run(
            [*launcher, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert completed.returncode == 0, completed.stderr[-4000:]
    ddp_log = completed.stderr + completed.stdout
    assert "kvcap training on 2 process(es): global batch 2 x 2 x 1 (accumulation) = 4 clips" in ddp_log
    assert ddp_log.count("kvcap training on 2 process(es)") == 1, "kvcap's lines come from the main process only"

    single_weights = load_file(single_dir / "final" / "model.safetensors")
    ddp_weights = load_file(ddp_dir / "final" / "model.safetensors")
    assert single_weights.keys() == ddp_weights.keys()
    # Same global batches, same steps: only the order of float reductions (and the per-rank token means) differ.
    for name in single_weights:
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=0, atol=2e-4, msg=name)
    # And training did move the weights, so equality is not trivial.
    initial = load_file(Path(tiny_backbones["qwen3"]) / "model.safetensors")
    moved = single_weights["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert (moved - initial["model.layers.0.self_attn.q_proj.weight"]).abs().max() > 1e-3


def test_yaml_presets_parse_and_command_line_overrides_them():
    model_args, data_args, training_args = parse_arguments(
        [str(REPO_ROOT / "kvcap" / "configs" / "demo.yaml"), "--stage1_epochs", "5", "--output_dir", "/tmp/kvcap-x"]
    )
    preset = yaml.safe_load((REPO_ROOT / "kvcap" / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    assert preset["stage1_epochs"] != 5  # else the override would not show
    assert training_args.stage1_epochs == 5 and training_args.stage2_epochs == preset["stage2_epochs"]
    assert training_args.num_train_epochs == 5 + preset["stage2_epochs"]
    assert data_args.prepare == {"module": "kvcap.demo.prepare", **{k: preset["prepare"][k] for k in preset["prepare"]}}
    assert not model_args.load_in_4bit and isinstance(training_args.stage2_learning_rate, float)
    for projector in PROJECTOR_TYPES:
        model_args, data_args, training_args = parse_arguments(
            # bf16 is what the presets ask for on a GPU; this machine has none.
            [str(REPO_ROOT / "kvcap" / "configs" / f"{projector}.yaml"), "--data_dir", "/data/aihub", "--bf16", "false"]
        )
        assert model_args.projector_type == projector and model_args.load_in_4bit
        assert model_args.text_model_name_or_path == "Qwen/Qwen3-8B"
        assert (training_args.stage1_learning_rate, training_args.stage2_learning_rate) == (1e-3, 5e-5)
        assert (training_args.stage1_epochs, training_args.stage2_epochs) == (2, 3)
        assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (16, 32, 0.05)


def refusal(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one-line error `parse_arguments` exits with on ``argv``."""
    with pytest.raises(SystemExit) as exited:
        parse_arguments(argv)
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_activation_checkpointing_is_on_by_default_and_either_name_turns_it_off(capsys):
    base = [str(REPO_ROOT / "kvcap" / "configs" / "demo.yaml"), "--output_dir", "/tmp/kvcap-x"]
    preset = yaml.safe_load((REPO_ROOT / "kvcap" / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    assert parse_arguments(base)[2].activation_checkpointing is preset["activation_checkpointing"]
    no_preset = [*base[1:], "--data_dir", "/data/aihub"]
    assert parse_arguments(no_preset)[2].activation_checkpointing is True
    real = [str(REPO_ROOT / "kvcap" / "configs" / "mlp_2l.yaml"), "--data_dir", "/data/aihub", "--bf16", "false"]
    assert parse_arguments(real)[2].activation_checkpointing is True
    assert parse_arguments([*real, "--activation_checkpointing", "false"])[2].activation_checkpointing is False
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):
        legacy = parse_arguments([*no_preset, "--gradient_checkpointing", "false"])[2]
    assert legacy.activation_checkpointing is False and legacy.gradient_checkpointing is False
    # Against a preset's activation_checkpointing the alias would be dropped silently; it is refused instead.
    assert "deprecated alias" in refusal([*real, "--gradient_checkpointing", "false"], capsys)


def test_a_preset_with_an_unknown_key_is_refused_naming_file_and_key(tmp_path, capsys):
    preset = tmp_path / "typo.yaml"
    preset.write_text("data_dir: /data/aihub\nstage2_learning_rat: 1.0e-4\n", encoding="utf-8")
    assert f"{preset}: unknown argument(s) stage2_learning_rat" in refusal([str(preset)], capsys)


def test_argument_mistakes_are_one_line_naming_the_file_or_argument(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data_dir: /data/aihub\nstage1_epochs: [1\n", encoding="utf-8")
    assert f"{broken}:3: not valid YAML" in refusal([str(broken)], capsys)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("data_dir: /data/\u00e9\n".encode("latin-1"))
    assert f"{latin}: a preset must be UTF-8 text" in refusal([str(latin)], capsys)
    listed = tmp_path / "list.yaml"
    listed.write_text("- data_dir\n", encoding="utf-8")
    assert f"{listed}: a preset must be a mapping" in refusal([str(listed)], capsys)
    missing = tmp_path / "nope.yaml"
    assert f"{missing}: no such preset file (installed presets: c_abstractor, demo" in refusal([str(missing)], capsys)
    assert "'mlp2l' is neither a YAML file nor an installed preset" in refusal(["mlp2l"], capsys)
    assert "unknown argument(s) --stage_epochs 3" in refusal(["demo", "--stage_epochs", "3"], capsys)


def test_installed_presets_are_found_by_name():
    from kvcap.training.arguments import PRESETS_DIR, preset_names

    assert PRESETS_DIR == REPO_ROOT / "kvcap" / "configs"
    assert preset_names() == sorted(["demo", *PROJECTOR_TYPES])
    by_name = parse_arguments(["demo", "--output_dir", "/tmp/kvcap-x"])
    by_path = parse_arguments([str(PRESETS_DIR / "demo.yaml"), "--output_dir", "/tmp/kvcap-x"])
    assert by_name[0] == by_path[0] and by_name[1] == by_path[1]
    assert parse_arguments(["perceiver", "--data_dir", "/d", "--bf16", "false"])[0].projector_type == "perceiver"
    # The demo trains with frame embeddings (measured better there); the real presets keep the seed's configuration,
    # and either is one flag away from the other.
    assert by_name[0].temporal_encoding == "frame_embedding"
    seed_demo = parse_arguments(["demo", "--output_dir", "/tmp/kvcap-x", "--temporal_encoding", "none"])[0]
    assert seed_demo.temporal_encoding == "none"
    for projector_type in PROJECTOR_TYPES:
        real = parse_arguments([projector_type, "--data_dir", "/d", "--bf16", "false"])[0]
        assert (real.projector_type, real.temporal_encoding) == (projector_type, "none")


def _previous_run(folder: Path) -> None:
    """A used output_dir: a complete checkpoint, one cut short, final/, eval/ and a file of the user's."""
    (folder / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-4").mkdir()  # killed while saving: no trainer_state.json
    for name in ("final", "eval"):
        (folder / name).mkdir()
        (folder / name / "x.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")


def test_a_used_output_dir_is_refused_unless_the_run_resumes_or_replaces_it(tmp_path, capsys):
    folder = tmp_path / "run"
    _previous_run(folder)
    base = ["--data_dir", "/data/aihub", "--output_dir", str(folder)]
    line = refusal(base, capsys)
    assert f"--output_dir {folder} holds a previous run (checkpoint-2, checkpoint-4, eval, final, notes.txt)" in line
    assert "--resume_from_checkpoint true" in line and "--overwrite_output_dir true" in line
    # `true` is the Trainer's "the last checkpoint": the last complete one, and it is found before any model loads.
    resumed = parse_arguments([*base, "--resume_from_checkpoint", "true"])[2]
    assert resumed.resume_from_checkpoint == str(folder / "checkpoint-2")
    assert parse_arguments([*base, "--resume_from_checkpoint", "false", "--overwrite_output_dir", "true"])[2]
    partial = str(folder / "checkpoint-4")
    assert "not a complete checkpoint" in refusal([*base, "--resume_from_checkpoint", partial], capsys)
    assert "no such checkpoint folder" in refusal([*base, "--resume_from_checkpoint", str(tmp_path / "nope")], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refusal(["--data_dir", "/d", "--output_dir", str(empty), "--resume_from_checkpoint", "true"], capsys)
    assert f"{empty} holds no complete checkpoint" in line
    assert parse_arguments(["--data_dir", "/d", "--output_dir", str(empty)])[2].resume_from_checkpoint is None


def test_overwrite_removes_only_what_a_run_writes(tmp_path, caplog):
    from kvcap.training.run import clear_previous_run

    folder = tmp_path / "run"
    _previous_run(folder)
    with caplog.at_level("WARNING", logger="kvcap.training.run"):
        clear_previous_run(folder)
    assert sorted(path.name for path in folder.iterdir()) == ["notes.txt"]
    assert "removed the previous run's checkpoint-2, checkpoint-4, final, eval" in caplog.text


def test_num_train_epochs_other_than_the_stages_is_refused(capsys):
    argv = ["--data_dir", "/data/aihub", "--stage1_epochs", "1", "--stage2_epochs", "2"]
    assert parse_arguments(argv)[2].num_train_epochs == 3
    assert parse_arguments([*argv, "--num_train_epochs", "3"])[2].num_train_epochs == 3
    assert "stage1_epochs and stage2_epochs" in refusal([*argv, "--num_train_epochs", "5"], capsys)


def test_a_preset_without_data_dir_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_arguments([str(REPO_ROOT / "kvcap" / "configs" / "linear.yaml"), "--bf16", "false"])
    assert "--data_dir" in capsys.readouterr().err


def test_push_to_hub_without_a_repository_id_is_refused_before_training(capsys):
    argv = [str(REPO_ROOT / "kvcap" / "configs" / "demo.yaml"), "--output_dir", "/tmp/kvcap-x", "--push_to_hub", "true"]
    with pytest.raises(SystemExit):
        parse_arguments(argv)
    assert "--hub_model_id" in capsys.readouterr().err
    assert parse_arguments([*argv, "--hub_model_id", "org/kvcap-mlp"])[2].hub_model_id == "org/kvcap-mlp"


CLEAN_CAPTION = r"""
import json, sys
folder, video, output = sys.argv[1:]
import torch
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(videos=[video])
with torch.no_grad():
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
caption = processor.batch_decode(generated, prompt_length=inputs["input_ids"].shape[1])[0]
json.dump({"caption": caption, "class": type(model).__module__}, open(output, "w"), ensure_ascii=False)
"""


def test_final_folder_loads_in_one_line_where_kvcap_is_not_installed(tiny_backbones, corpus, tmp_path):
    output_dir = tmp_path / "run"
    argv = run_argv(tiny_backbones, corpus, output_dir, final_eval=True, hub_model_id="org/kvcap-mlp")
    metrics = train_hf.main(argv)
    final = output_dir / "final"
    # The end of training runs the same evaluation as eval_hf.py, with the same files and schema.
    assert json.loads((output_dir / "eval" / "metrics.json").read_text()) == metrics
    assert metrics["overall"]["num_clips"] == 4 and metrics["overall"]["meteor"] is not None
    assert {"predictions.jsonl", "report.html"} <= {path.name for path in (output_dir / "eval").iterdir()}
    card = (final / "README.md").read_text(encoding="utf-8")
    assert 'AutoModel.from_pretrained("org/kvcap-mlp", trust_remote_code=True)' in card
    assert f"| val_meteor | {metrics['overall']['meteor']:.4f} |" in card
    assert "model.generate(**inputs)" in card and "repetition_penalty" not in card.split("```")[1]
    assert (final / "adapter" / "adapter_model.safetensors").exists()

    video = sorted((corpus / "val" / "videos").glob("*.mp4"))[0]
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    # The folder's generation_config.json is kvcap's policy with the run's length limit, and a plain generate with
    # it writes exactly the captions of the final evaluation.
    saved_policy = json.loads((final / "generation_config.json").read_text(encoding="utf-8"))
    assert saved_policy["do_sample"] is False and saved_policy["repetition_penalty"] == 1.2
    assert saved_policy["max_new_tokens"] == 8 and model.config.video_token_id in saved_policy["suppress_tokens"]
    assert processor.end_of_turn_id not in saved_policy["suppress_tokens"]
    evaluated = [json.loads(line) for line in (output_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    for row in evaluated[:2]:
        plain_inputs = processor(videos=[row["video_path"]])
        with torch.no_grad():
            plain = model.generate(**plain_inputs)
        assert processor.batch_decode(plain, prompt_length=plain_inputs["input_ids"].shape[1])[0] == row["prediction"]
    inputs = processor(videos=[str(video)])
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = processor.batch_decode(generated, prompt_length=inputs["input_ids"].shape[1])[0]

    output = tmp_path / "caption.json"
    run_in_clean_interpreter(CLEAN_CAPTION, str(final), str(video), str(output), workdir=tmp_path)
    loaded = json.loads(output.read_text(encoding="utf-8"))
    assert loaded["class"].startswith("transformers_modules.")
    assert loaded["caption"] == expected and expected

    # The adapter folder loads the way its card says, where kvcap is not installed, and equals the merged model.
    adapter_card = (final / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "AutoPeftModel.from_pretrained` cannot load it" in adapter_card and "library_name: peft" in adapter_card
    snippet = adapter_card.split("```python\n")[1].split("```")[0]
    assert 'MODEL_ID = "org/kvcap-mlp"' in snippet
    compare = (
        "import sys, numpy, torch\n"
        "from transformers import AutoModel, AutoProcessor\n"
        "merged = AutoModel.from_pretrained(MODEL_ID, trust_remote_code=True).eval()\n"
        "inputs = AutoProcessor.from_pretrained(MODEL_ID, trust_remote_code=True)(videos=[sys.argv[2]])\n"
        "with torch.no_grad():\n"
        "    difference = (model.eval()(**inputs).logits - merged(**inputs).logits).abs().max().item()\n"
        "assert type(base).__module__.startswith('transformers_modules.'), type(base)\n"
        "assert difference < 1e-4, difference\n"
    )
    script = snippet.replace('MODEL_ID = "org/kvcap-mlp"', "MODEL_ID = sys.argv[1]") + compare
    run_in_clean_interpreter("import sys\n" + script, str(final), str(video), workdir=tmp_path)


def test_diversity_monitor_logs_warns_and_can_stop_training(tiny_backbones, corpus, tmp_path, caplog):
    # A threshold above 1 makes every evaluation count as collapsed, so the stop path runs deterministically.
    argv = run_argv(
        tiny_backbones,
        corpus,
        tmp_path / "run",
        eval_strategy="steps",
        eval_steps=2,
        diversity_threshold=1.01,
        stop_on_collapse=True,
        diversity_num_samples=3,
    )
    run = train_hf.prepare_run(argv)
    with caplog.at_level("WARNING", logger="kvcap.training.monitor"):
        run.trainer.train()
    assert run.trainer.state.global_step == 2, "training stopped at the first collapsed evaluation"
    logged = [entry for entry in run.trainer.state.log_history if "eval_unique_ratio" in entry]
    assert len(logged) == 1 and 0 < logged[0]["eval_unique_ratio"] <= 1
    assert {"eval_distinct_1", "eval_distinct_2"} <= set(logged[0])
    assert "Mode collapse" in caplog.text


def test_best_checkpoint_can_be_kept_by_diversity(tiny_backbones, corpus, tmp_path):
    argv = run_argv(
        tiny_backbones,
        corpus,
        tmp_path / "run",
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="eval_unique_ratio",
        greater_is_better=True,
        load_best_model_at_end=True,
        diversity_num_samples=4,
    )
    run = train_hf.prepare_run(argv)
    run.trainer.train()
    ratios = {
        entry["step"]: entry["eval_unique_ratio"]
        for entry in run.trainer.state.log_history
        if "eval_unique_ratio" in entry
    }
    assert len(ratios) == 4
    assert run.trainer.state.best_metric == max(ratios.values())
    best_step = int(Path(run.trainer.state.best_model_checkpoint).name.split("-")[1])
    assert ratios[best_step] == max(ratios.values())


def test_qlora_run_exports_lora_merged_into_unquantized_weights(tiny_backbones, corpus, tmp_path):
    pytest.importorskip("bitsandbytes")
    import eval_hf

    argv = run_argv(tiny_backbones, corpus, tmp_path / "run", load_in_4bit=True, final_eval=True)
    run = train_hf.prepare_run(argv)
    quantized = run.trainer.model.get_base_model().language_model.layers[0].self_attn.q_proj
    assert type(quantized.base_layer).__name__ == "Linear4bit"
    run.trainer.train()
    metrics = train_hf.finish_run(run)

    # The final evaluation loads the release on the training device in 4-bit, as eval_hf.py does with
    # --load_in_4bit, and captions as it does.
    source = metrics["source"]
    assert (source["device"], source["load_in_4bit"]) == ("cpu", True)
    final_eval = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").open()]
    eval_argv = ["--model_name_or_path", str(tmp_path / "run" / "final"), "--data_dir", str(corpus), "--split", "val"]
    eval_argv += ["--output_dir", str(tmp_path / "eval_hf"), "--load_in_4bit", "true", "--batch_size", "4"]
    assert eval_hf.main([*eval_argv, "--no_progress"]) == 0
    by_eval_hf = [json.loads(line) for line in (tmp_path / "eval_hf" / "predictions.jsonl").open()]
    assert [row["prediction"] for row in final_eval] == [row["prediction"] for row in by_eval_hf]
    assert len(final_eval) == 4

    merged = load_file(tmp_path / "run" / "final" / "model.safetensors")
    base = load_file(Path(tiny_backbones["qwen3"]) / "model.safetensors")
    weight = merged["model.language_model.layers.0.self_attn.q_proj.weight"]
    original = base["model.layers.0.self_attn.q_proj.weight"]
    assert weight.dtype == torch.float32 and weight.shape == original.shape, "saved unquantized, full shape"
    assert not any("quant" in key or "absmax" in key for key in merged), "no 4-bit state in the release"
    delta = (weight - original).abs().max()
    assert 1e-5 < delta < 0.5, f"LoRA update merged into the original weights (max change {delta})"


def test_model_arguments_carry_every_model_setting_with_the_config_defaults():
    defaults = {f.name: f.default for f in fields(ModelArguments)}
    assert {name: defaults[name] for name in MODEL_SETTINGS} == KVCapConfig().settings()


@pytest.mark.parametrize(
    "settings",
    [
        {"projector_type": "mlp_2l", "projector_hidden_act": "silu", "vision_feature_layer": -1},
        {"projector_type": "perceiver", "num_query_tokens": 4, "perceiver_depth": 1, "perceiver_num_heads": 1},
        {"projector_type": "c_abstractor", "num_query_tokens": 16, "abstractor_depth": 2},
        {"projector_type": "linear", "num_frames": 4},
    ],
    ids=lambda settings: settings["projector_type"],
)
def test_every_model_setting_survives_train_export_and_reload(tiny_backbones, corpus, tmp_path, settings):
    from transformers import AutoModel

    from kvcap.training.export import trained_projector

    argv = run_argv(tiny_backbones, corpus, tmp_path / "run", max_train_samples=4, max_eval_samples=2, **settings)
    run = train_hf.prepare_run(argv)
    run.trainer.train()
    train_hf.finish_run(run)
    trained = run.trainer.model.get_base_model().config
    assert {name: getattr(trained, name) for name in settings} == settings

    final = tmp_path / "run" / "final"
    saved = json.loads((final / "config.json").read_text(encoding="utf-8"))
    assert {name: saved[name] for name in MODEL_SETTINGS} == trained.settings()
    reloaded = AutoModel.from_pretrained(final).eval()
    assert reloaded.config.settings() == trained.settings()
    # Same weights under the same activation and depths: the reloaded projector computes what training learnt.
    torch.manual_seed(0)
    features = torch.randn(2, trained.num_frames, trained.num_patches, trained.vision_config.hidden_size)
    with torch.no_grad():
        expected = trained_projector(run.trainer.model).eval()(features)
        torch.testing.assert_close(reloaded.multi_modal_projector(features), expected)


def test_the_preparation_step_comes_from_the_preset_or_the_command_line_and_runs_with_its_options(tmp_path, capsys):
    from kvcap.training.run import run_preparation

    demo = str(REPO_ROOT / "kvcap" / "configs" / "demo.yaml")
    override = json.dumps({"module": "kvcap.demo.prepare", "num_train_clips": 240, "num_val_clips": 60})
    assert parse_arguments([demo, "--prepare", override])[1].prepare["num_train_clips"] == 240
    assert "JSON object" in refusal([demo, "--prepare", "kvcap.demo.prepare"], capsys)

    # A module of the caller's own, found on sys.path like any preparation step.
    (tmp_path / "my_prepare.py").write_text(
        "def prepare(model_args, data_args, marker):\n"
        "    open(marker, 'w').write(data_args.data_dir + ' ' + model_args.projector_type)\n",
        encoding="utf-8",
    )
    marker = tmp_path / "prepared.txt"
    sys.path.insert(0, str(tmp_path))
    try:
        spec = json.dumps({"module": "my_prepare", "marker": str(marker)})
        model_args, data_args, _ = parse_arguments(["--data_dir", "/data/aihub", "--prepare", spec])
        run_preparation(model_args, data_args)
        assert marker.read_text() == "/data/aihub mlp_2l"
        with pytest.raises(TypeError, match="unexpected keyword argument 'num_clips'"):
            data_args.prepare = {"module": "my_prepare", "marker": str(marker), "num_clips": 3}
            run_preparation(model_args, data_args)
        data_args.prepare = {"module": "json"}
        with pytest.raises(ValueError, match="no prepare"):
            run_preparation(model_args, data_args)
    finally:
        sys.path.remove(str(tmp_path))


def test_a_model_drawn_to_its_video_placeholder_still_captions_in_the_monitor_and_the_final_evaluation(
    tiny_backbones, corpus, tmp_path, monkeypatch
):
    from kvcap.training import run as training_run

    def towards_the_placeholder(module, inputs, output):
        if module.training:
            return output  # training itself sees the real head
        biased = output.clone()
        biased[..., video_token_id] = output.amax() + 10.0
        return biased

    load = training_run.load_model_and_processor

    def load_then_bias(*args, **kwargs):
        model, processor = load(*args, **kwargs)
        model.lm_head.register_forward_hook(towards_the_placeholder)
        return model, processor

    monkeypatch.setattr(training_run, "load_model_and_processor", load_then_bias)
    argv = run_argv(tiny_backbones, corpus, tmp_path / "run", eval_strategy="epoch", final_eval=True)
    run = train_hf.prepare_run(argv)
    video_token_id = run.processor.video_token_id
    run.trainer.model.get_base_model().lm_head.register_forward_hook(towards_the_placeholder)
    run.trainer.train()
    metrics = train_hf.finish_run(run)

    monitor = next(c for c in run.trainer.callback_handler.callbacks if isinstance(c, DiversityMonitorCallback))
    assert len(monitor.history) == 2 and all(len(entry["captions"]) == 2 for entry in monitor.history)
    assert metrics["overall"]["num_clips"] == 4 and metrics["num_generation_failed"] == 0

    # The bias is real: without the policy's suppression the trained model writes nothing but placeholders.
    trained = run.trainer.model.eval()
    inputs = run.processor(videos=[str(sorted((corpus / "val" / "videos").glob("*.mp4"))[0])])
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        unsuppressed = trained.generate(**inputs, max_new_tokens=3, suppress_tokens=None)
        kvcap = trained.generate(**inputs, max_new_tokens=3)
    assert (unsuppressed[0, prompt_length:] == video_token_id).all()
    assert not (kvcap[0, prompt_length:] == video_token_id).any()


def test_a_preparation_step_that_draws_random_numbers_does_not_change_the_run(tiny_backbones, corpus, tmp_path):
    from kvcap.training.export import trained_projector

    # As the demo's step does when it pretrains missing backbones, and does not when it finds them.
    (tmp_path / "draws_random.py").write_text(
        "import torch\n\ndef prepare(model_args, data_args, draws):\n    torch.rand(draws)\n", encoding="utf-8"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        projectors = []
        for draws in (0, 1000):
            spec = json.dumps({"module": "draws_random", "draws": draws})
            run = train_hf.prepare_run(
                [*run_argv(tiny_backbones, corpus, tmp_path / f"run-{draws}"), "--prepare", spec]
            )
            projectors.append(trained_projector(run.trainer.model).state_dict())
    finally:
        sys.path.remove(str(tmp_path))
    assert projectors[0].keys() == projectors[1].keys()
    for name in projectors[0]:
        assert torch.equal(projectors[0][name], projectors[1][name]), name


def test_without_the_feature_cache_a_bad_clip_is_skipped_not_fatal(tiny_backbones, tmp_path, caplog):
    from kvcap.demo.video_clips import corrupt_first_keyframe, truncate_copy

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, num_train=8, num_val=2, seed=0)
    videos, labels = corpus / "train" / "videos", corpus / "train" / "labels"
    source = sorted(videos.glob("*.mp4"))[0]
    # One clip that a probe catches (truncated: no index), one that only decoding does (a damaged keyframe).
    truncate_copy(source, videos / "cut.mp4", 0.5)
    corrupt_first_keyframe(source, videos / "damaged.mp4")
    for stem in ("cut", "damaged"):
        shutil.copy(labels / f"{source.stem}.json", labels / f"{stem}.json")
    (corpus / "train" / "TS_2.zip").write_bytes(b"PK\x03\x04")  # part of the corpus left unextracted
    argv = run_argv(tiny_backbones, corpus, tmp_path / "run", use_feature_cache=False, per_device_train_batch_size=5)
    with caplog.at_level("WARNING"):
        run = train_hf.prepare_run(argv)
        assert len(run.trainer.train_dataset) == 9  # the truncated clip is skipped when the split is opened
        run.trainer.train()
    assert run.trainer.state.global_step == 4  # both epochs, every step
    assert "unreadable_video=1" in caplog.text and "damaged.mp4" in caplog.text
    assert "Skipped a clip that cannot be decoded" in caplog.text
    assert "1 archive(s) not extracted" in caplog.text  # training says so too, not only load_aihub's callers


def test_training_says_how_many_captions_it_cuts_before_it_starts(tiny_backbones, corpus, tmp_path, caplog):
    argv = run_argv(tiny_backbones, corpus, tmp_path / "run", max_caption_tokens=12)
    with caplog.at_level("INFO", logger="kvcap.training.collator"):
        run = train_hf.prepare_run(argv)
    assert "train: 16 of 16 captions are longer than --max_caption_tokens 12" in caplog.text
    assert "val: 4 of 4 captions are longer than --max_caption_tokens 12" in caplog.text
    batch = run.trainer.data_collator([run.trainer.train_dataset[index] for index in range(4)])
    assert ((batch["labels"] != -100).sum(dim=1) == 12).all()
