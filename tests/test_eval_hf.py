"""eval_hf.py end to end on a tiny demo corpus with a tiny saved checkpoint, the caption command, the report, and
batched generation against one clip at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import eval_hf
from kvcap.demo.corpus import generate_corpus
from kvcap.evaluation.report import render_report
from kvcap.generation import generate_captions

from .conftest import REPO_ROOT, tiny_kvcap_config, tiny_processor

NUM_VAL = 6
BROKEN_ID = "kvcap_demo_val_broken"
GENERATION_ARGS = ["--max_new_tokens", "12", "--no_progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six demo val clips, plus one clip whose mp4 is cut short: it passes the header check but cannot be decoded."""
    root = tmp_path_factory.mktemp("eval-corpus")
    generate_corpus(root, num_train=0, num_val=NUM_VAL, seed=0)
    videos, labels = root / "val" / "videos", root / "val" / "labels"
    whole = (videos / "kvcap_demo_val_00000.mp4").read_bytes()
    (videos / f"{BROKEN_ID}.mp4").write_bytes(whole[: len(whole) // 3])
    shutil.copy(labels / "kvcap_demo_val_00000.json", labels / f"{BROKEN_ID}.json")
    return root


@pytest.fixture(scope="module")
def checkpoint(make_tiny_model, tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model and its processor saved into one folder: a complete checkpoint."""
    folder = tmp_path_factory.mktemp("checkpoint")
    model = make_tiny_model("mlp_2l").eval()
    model.save_pretrained(folder)
    tiny_processor(tiny_tokenizer, model.config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def eval_run(corpus: Path, checkpoint: Path, tiny_backbones: dict[str, Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-out")
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(corpus), "--split", "val"]
    argv += ["--output_dir", str(out), "--siglip_model_name_or_path", str(tiny_backbones["siglip"])]
    assert eval_hf.main([*argv, "--batch_size", "4", *GENERATION_ARGS]) == 0
    return out


class _ReportParser(HTMLParser):
    """Collects per clip row: its frame images and the text of its caption and reference."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.scripts = 0
        self._span: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "tr" and attributes.get("class") == "clip":
            self.rows.append({"images": [], "prediction": "", "reference": ""})
        elif tag == "img" and self.rows:
            self.rows[-1]["images"].append(attributes["src"])
        elif tag == "span" and attributes.get("class") in ("prediction", "reference"):
            self._span = attributes["class"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._span = None

    def handle_data(self, data: str) -> None:
        if self._span and self.rows:
            self.rows[-1][self._span] += data


def _parse_report(path: Path) -> _ReportParser:
    parser = _ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _labels(corpus: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (corpus / "val" / "labels").glob("*.json")}


def test_evaluation_writes_predictions_metrics_and_report(eval_run: Path, corpus: Path) -> None:
    labels = _labels(corpus)
    rows = [json.loads(line) for line in (eval_run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["video_id"] for r in rows) == sorted(stem for stem in labels if stem != BROKEN_ID)
    for row in rows:
        label = labels[row["video_id"]]
        assert row["reference"] == label["annotation"]["description_kr"]
        assert row["category"] == label["category"]
        assert isinstance(row["prediction"], str) and 1 <= row["num_tokens"] <= 12
        assert row["finished"] or row["num_tokens"] == 12
        assert 0.0 <= row["scores"]["meteor"] <= 1.0 and 0.0 <= row["scores"]["siglip_score"] <= 1.0
        assert 0.0 <= row["scores"]["attribute_recall"] <= 1.0

    metrics = json.loads((eval_run / "metrics.json").read_text(encoding="utf-8"))
    overall = metrics["overall"]
    assert overall["num_clips"] == NUM_VAL
    assert overall["meteor"] == pytest.approx(sum(r["scores"]["meteor"] for r in rows) / NUM_VAL)
    assert overall["meteor_floor"] is not None and overall["siglip_floor"] is not None
    diversity = overall["diversity"]
    assert diversity["num_captions"] == NUM_VAL
    assert diversity["num_unique"] == len({" ".join(r["prediction"].split()) for r in rows})
    assert {"distinct_1", "distinct_2", "self_bleu_4", "vocab_size"} <= set(diversity)
    assert set(metrics["per_category"]) == {r["category"] for r in rows}
    assert sum(c["num_clips"] for c in metrics["per_category"].values()) == NUM_VAL
    assert metrics["targets"]["meteor"]["target"] == 0.40
    assert metrics["targets"]["meteor"]["passed"] is (overall["meteor"] > 0.40)
    assert metrics["targets"]["diversity"]["value"] == diversity["unique_ratio"]
    assert metrics["siglip"]["skipped"] is False
    assert metrics["generation"]["max_new_tokens"] == 12 and metrics["generation"]["repetition_penalty"] == 1.2
    # The broken clip is counted and named, not dropped silently.
    assert metrics["num_unreadable"] == 1
    assert metrics["unreadable_videos"][0]["video_path"].endswith(f"{BROKEN_ID}.mp4")

    report = _parse_report(eval_run / "report.html")
    assert len(report.rows) == NUM_VAL
    by_prediction = sorted((r["prediction"], r["reference"]) for r in report.rows)
    assert by_prediction == sorted((r["prediction"], r["reference"]) for r in rows)
    for row in report.rows:
        assert len(row["images"]) == 8 and all(src.startswith("data:image/jpeg;base64,") for src in row["images"])
    assert f"{BROKEN_ID}.mp4" in (eval_run / "report.html").read_text(encoding="utf-8")


def test_scoring_saved_predictions_reproduces_the_metrics(
    eval_run: Path, tiny_backbones: dict[str, Path], tmp_path: Path
) -> None:
    argv = ["--predictions", str(eval_run / "predictions.jsonl"), "--output_dir", str(tmp_path)]
    assert eval_hf.main([*argv, "--siglip_model_name_or_path", str(tiny_backbones["siglip"]), "--no_progress"]) == 0
    first = json.loads((eval_run / "metrics.json").read_text(encoding="utf-8"))
    again = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    for key in ("overall", "per_category", "targets", "all_targets_passed"):
        assert again[key] == first[key], key
    assert len(_parse_report(tmp_path / "report.html").rows) == NUM_VAL

    # Without a SigLIP model the score is skipped, and metrics.json says so.
    assert eval_hf.main([*argv, "--no_progress"]) == 0
    skipped = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert skipped["siglip"]["skipped"] is True and "siglip" in skipped["siglip"]["note"].lower()
    assert skipped["targets"]["siglip_score"]["passed"] is None and skipped["targets"]["siglip_score"]["note"]
    assert skipped["overall"]["meteor"] == first["overall"]["meteor"]


def test_report_escapes_captions() -> None:
    hostile = "<script>alert('x')</script> & \"따옴표\" <b>굵게</b>"
    metrics = {
        "overall": {
            "num_clips": 1,
            "meteor": 0.1,
            "meteor_floor": 0.05,
            "diversity": {
                "unique_ratio": 0.2,
                "num_unique": 1,
                "num_captions": 5,
                "top_share": 1.0,
                "distinct_1": 0.1,
                "distinct_2": 0.1,
                "self_bleu_4": 0.9,
                "vocab_size": 3,
                "collapsed": True,
                "collapse_threshold": 0.5,
            },
        },
        "targets": {"meteor": {"target": 0.4, "value": 0.1, "passed": False}},
    }
    clip = {"video_id": "a<b", "category": "자연", "prediction": hostile, "reference": hostile, "scores": {}}
    page = render_report(metrics, [{**clip, "frames": []}])
    report = _ReportParser()
    report.feed(page)
    assert report.scripts == 1, "only the report's own script"
    assert report.rows[0]["prediction"] == hostile and report.rows[0]["reference"] == hostile
    assert "Mode collapse" in page


def test_caption_command_prints_one_caption_per_video(checkpoint: Path, corpus: Path) -> None:
    videos = [str(corpus / "val" / "videos" / f"kvcap_demo_val_0000{i}.mp4") for i in (1, 2)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "eval_hf.py", "--model_name_or_path", str(checkpoint), "--video", *videos]
    done = subprocess.run(
        [*command, *GENERATION_ARGS], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split("\t", 1)[0] for line in lines] == videos

    model, processor = eval_hf.load_model_and_processor(str(checkpoint), device="cpu")
    expected = generate_captions(model, processor, videos, max_new_tokens=12)
    assert [line.split("\t", 1)[1] for line in lines] == [" ".join(c.split()) for c in expected]


def test_caption_command_names_bad_videos(
    checkpoint: Path, corpus: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    good = str(corpus / "val" / "videos" / "kvcap_demo_val_00003.mp4")
    missing = str(corpus / "val" / "videos" / "no_such_clip.mp4")
    folder = str(corpus / "val")
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(tmp_path / "loop2.mp4")
    (tmp_path / "loop2.mp4").symlink_to(loop)
    from PIL import Image

    picture = tmp_path / "photo.mp4"
    Image.new("RGB", (64, 48), (10, 200, 10)).save(picture, format="PNG")  # a still image renamed .mp4
    # Not all-or-nothing: the good clip is captioned, each bad path is named with why, and the status says so.
    bad = [missing, folder, str(loop), str(picture)]
    argv = ["--model_name_or_path", str(checkpoint), "--video", bad[0], good, *bad[1:], *GENERATION_ARGS]
    assert eval_hf.main(argv) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [good]
    assert f"{missing}\tERROR: " in captured.err and "file not found" in captured.err
    assert "not a regular file (a directory)" in captured.err and "symbolic link loop" in captured.err
    assert "a still image (png), not a video" in captured.err

    broken = str(corpus / "val" / "videos" / f"{BROKEN_ID}.mp4")
    assert eval_hf.main(["--model_name_or_path", str(checkpoint), "--video", broken, good, *GENERATION_ARGS]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [good]
    assert broken in captured.err

    absent_model = str(corpus / "no-such-model")
    assert eval_hf.main(["--model_name_or_path", absent_model, "--video", good]) == 2
    assert absent_model in capsys.readouterr().err


def _bias_logits(model: torch.nn.Module, favoured: dict[int, float]) -> None:
    """Make `lm_head` give every token -1 but ``favoured`` ones their value, whatever the input."""

    def fixed_logits(module, inputs, output):
        logits = torch.full_like(output, -1.0)
        for token, value in favoured.items():
            logits[..., token] = value
        return logits

    model.lm_head.register_forward_hook(fixed_logits)


def test_the_folders_generation_config_captions_to_the_end_as_eval_hf_writes(
    checkpoint: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import GenerationMixin

    model, processor = eval_hf.load_model_and_processor(str(checkpoint), device="cpu")
    assert (model.generation_config.do_sample, model.generation_config.max_new_tokens) == (False, 768)
    word = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize("하늘")[0])
    end = processor.end_of_turn_id
    # One word, then the end of the turn: the folder's penalty (1.2, generated tokens only) lowers the word once it
    # has been said (10 / 1.2 < 9.5). Penalising the prompt too would lower <|im_end|> (it ends the user turn) first.
    _bias_logits(model, {word: 10.0, end: 9.5})
    monkeypatch.setattr(eval_hf, "load_model_and_processor", lambda *args, **kwargs: (model, processor))
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(corpus), "--output_dir", str(tmp_path)]
    assert eval_hf.main([*argv, "--no_progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == NUM_VAL
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["generation"]["max_new_tokens"], metrics["generation"]["repetition_penalty"]) == (768, 1.2)

    for row in rows:
        inputs = processor(videos=[row["video_path"]])
        prompt_length = inputs["input_ids"].shape[1]
        with torch.no_grad():
            generated = model.generate(**inputs)  # nothing but the folder's own generation config
        assert generated[0, prompt_length:].tolist() == [word, end]
        assert processor.batch_decode(generated, prompt_length=prompt_length)[0] == row["prediction"]
        assert row["finished"] is True and row["num_tokens"] == 2
        # The stock penalty over the whole prompt never lets the caption end.
        with torch.no_grad():
            stock = GenerationMixin.generate(model, **inputs, max_new_tokens=6, repetition_penalty=1.2)
        assert end not in stock[0, prompt_length:].tolist()


def test_a_clip_that_fails_to_generate_is_recorded_and_the_others_are_captioned(
    checkpoint: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from kvcap import captioning

    _, processor = eval_hf.load_model_and_processor(str(checkpoint), device="cpu")
    failing = str(corpus / "val" / "videos" / "kvcap_demo_val_00002.mp4")
    failing_frames = processor.load_frames(failing)
    generate = captioning.generate_captions_detailed

    def fails_on_one_clip(model, processor, videos, *args, **kwargs):
        if any(np.array_equal(clip, failing_frames) for clip in videos):
            raise RuntimeError("CUDA out of memory (simulated)")
        return generate(model, processor, videos, *args, **kwargs)

    monkeypatch.setattr(captioning, "generate_captions_detailed", fails_on_one_clip)
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(corpus), "--output_dir", str(tmp_path)]
    assert eval_hf.main([*argv, "--batch_size", "4", *GENERATION_ARGS]) == 0
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(row["video_id"] for row in rows) == [f"kvcap_demo_val_0000{i}" for i in range(NUM_VAL) if i != 2]
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_generation_failed"] == 1 and metrics["num_unreadable"] == 2  # and the broken mp4
    failed = {entry["video_path"]: entry["error"] for entry in metrics["unreadable_videos"]}
    assert failed[failing] == "generation failed: RuntimeError: CUDA out of memory (simulated)"


def test_eval_hf_captions_every_clip_of_a_model_drawn_to_its_video_placeholder(
    checkpoint: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, processor = eval_hf.load_model_and_processor(str(checkpoint), device="cpu")
    _bias_logits(model, {model.config.video_token_id: 10.0})
    monkeypatch.setattr(eval_hf, "load_model_and_processor", lambda *args, **kwargs: (model, processor))
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(corpus), "--output_dir", str(tmp_path)]
    for batch_size in ("4", "1"):
        assert eval_hf.main([*argv, "--batch_size", batch_size, *GENERATION_ARGS]) == 0
        metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["overall"]["num_clips"] == NUM_VAL and metrics["num_generation_failed"] == 0
        rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        # Every logit but the placeholder's is -1: with it suppressed, ordinary tokens fill the caption to the limit.
        assert all(row["num_tokens"] == 12 and not row["finished"] for row in rows)


def test_captions_survive_a_scorer_that_cannot_load(checkpoint: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(corpus), "--output_dir", str(out)]
    with pytest.raises(OSError, match="no/such"):
        eval_hf.main([*argv, "--siglip_model_name_or_path", str(tmp_path / "no" / "such"), *GENERATION_ARGS])
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == NUM_VAL and all(row["prediction"] is not None and row["num_tokens"] for row in rows)
    assert not (out / "metrics.json").exists()
    # What the log advises: score the kept captions again, without generating.
    rescored = tmp_path / "rescored"
    assert eval_hf.main(["--predictions", str(out / "predictions.jsonl"), "--output_dir", str(rescored)]) == 0
    assert json.loads((rescored / "metrics.json").read_text(encoding="utf-8"))["overall"]["num_clips"] == NUM_VAL


def test_the_read_error_caught_is_the_processors_own(tiny_tokenizer) -> None:
    from types import SimpleNamespace

    from kvcap.evaluation.run import video_read_error
    from processing.video_io import VideoReadError

    processor = tiny_processor(tiny_tokenizer, tiny_kvcap_config(tiny_tokenizer))
    assert video_read_error(processor) is VideoReadError
    with pytest.raises(VideoReadError, match=r"no-such\.mp4"):
        processor.load_frames("/no-such.mp4")
    # A processor saved before it named its error class: its reader's errors are RuntimeErrors.
    assert video_read_error(SimpleNamespace()) is RuntimeError


def test_saved_predictions_score_again_from_another_directory_and_without_a_video(
    checkpoint: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The corpus given as a relative path, as a preset's `outputs/demo-assets/corpus` is.
    copy = tmp_path / "work" / "corpus"
    shutil.copytree(corpus, copy)
    (copy / "val" / "VS_2.zip").write_bytes(b"PK\x03\x04")  # a part of the corpus left unextracted
    monkeypatch.chdir(copy.parent)
    out = tmp_path / "eval"
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", "corpus", "--output_dir", str(out)]
    assert eval_hf.main([*argv, *GENERATION_ARGS]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(Path(row["video_path"]).is_absolute() for row in rows)
    scan = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["dataset_scan"]
    assert scan["archives"] == [str(Path("corpus") / "val" / "VS_2.zip")]
    assert "1 archive(s) not extracted" in (out / "report.html").read_text(encoding="utf-8")

    monkeypatch.chdir(tmp_path)
    again = tmp_path / "again"
    assert eval_hf.main(["--predictions", str(out / "predictions.jsonl"), "--output_dir", str(again)]) == 0
    metrics = json.loads((again / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_unreadable"] == 0 and metrics["num_videos_not_read"] == 0
    assert all(len(row["images"]) == 8 for row in _parse_report(again / "report.html").rows)

    # A video gone since: its caption is still scored, and the clip is named as not read, not as uncaptioned.
    gone = Path(rows[0]["video_path"])
    gone.unlink()
    assert eval_hf.main(["--predictions", str(out / "predictions.jsonl"), "--output_dir", str(again)]) == 0
    metrics = json.loads((again / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["overall"]["num_clips"] == NUM_VAL and metrics["num_unreadable"] == 0
    assert metrics["num_videos_not_read"] == 1 and metrics["videos_not_read"][0]["video_path"] == str(gone)
    html = (again / "report.html").read_text(encoding="utf-8")
    assert "1 captioned clip(s) whose video could not be read again" in html and "unreadable video" not in html


def test_video_dir_writes_captions_jsonl_resumes_and_refuses_other_settings(
    checkpoint: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kvcap.eval")
    out = tmp_path / "captions"
    argv = ["--model_name_or_path", str(checkpoint), "--video_dir", str(corpus / "val"), "--output_dir", str(out)]
    assert eval_hf.main([*argv, "--num_workers", "1", *GENERATION_ARGS]) == 1  # the broken clip is named
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == NUM_VAL + 1 and sum("caption" in row for row in rows) == NUM_VAL
    assert f"{BROKEN_ID}.mp4\tERROR:" in captured.err and len(captured.out.splitlines()) == NUM_VAL
    assert f"captioned {NUM_VAL} of {NUM_VAL + 1} videos (0 done before" in caplog.text

    # Again: every caption is found done; only the unreadable clip is tried again.
    assert eval_hf.main([*argv, *GENERATION_ARGS]) == 1
    again = capsys.readouterr()
    assert f"captioned 0 of {NUM_VAL + 1} videos ({NUM_VAL} done before" in caplog.text
    assert sorted(again.out.splitlines()) == sorted(captured.out.splitlines())

    assert eval_hf.main([*argv, "--max_new_tokens", "4", "--no_progress"]) == 2
    assert "holds captions of another job (differing: decoding)" in capsys.readouterr().err
    assert eval_hf.main(["--model_name_or_path", str(checkpoint), "--video_dir", str(corpus)]) == 2
    assert "--video_dir needs --output_dir" in capsys.readouterr().err


def test_an_evaluation_whose_scoring_failed_resumes_from_its_captions(
    checkpoint: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvcap import captioning
    from kvcap.evaluation import run as evaluation_run

    out = tmp_path / "eval"
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(corpus), "--output_dir", str(out)]
    with pytest.raises(OSError, match="no/such"):
        eval_hf.main([*argv, "--siglip_model_name_or_path", str(tmp_path / "no" / "such"), *GENERATION_ARGS])
    journal = out / evaluation_run.PARTIAL_CAPTIONS
    made = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert sum("prediction" in row for row in made) == NUM_VAL  # appended as they were made, before scoring

    def must_not_generate(*args, **kwargs):
        raise AssertionError("a resumed evaluation generated a caption it already had")

    monkeypatch.setattr(captioning, "generate_captions_detailed", must_not_generate)
    assert eval_hf.main([*argv, *GENERATION_ARGS]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(row["prediction"] for row in rows) == sorted(row["prediction"] for row in made if "prediction" in row)
    assert not journal.exists()  # the outputs are written: nothing left to resume


def test_a_folders_own_code_runs_only_when_asked(checkpoint: Path, corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    marker = tmp_path / "folder-code-ran"
    for name in ("configuration_kvcap.py", "processing_kvcap.py"):
        future = "from __future__ import annotations\n"
        code = (folder / name).read_text(encoding="utf-8")
        # A modified copy: had it run, it would leave the marker behind.
        planted = f"{future}open({str(marker)!r}, 'a').write('{name}\\n')\n"
        (folder / name).write_text(code.replace(future, planted, 1), encoding="utf-8")
    good = str(corpus / "val" / "videos" / "kvcap_demo_val_00001.mp4")
    argv = ["--model_name_or_path", str(folder), "--video", good, *GENERATION_ARGS]
    assert eval_hf.main(argv) == 0
    assert not marker.exists()  # kvcap's installed classes loaded it
    # Asked, the folder's code runs (here its processor's: in this process kvcap's model classes are registered,
    # and transformers prefers registered classes to a folder's).
    assert eval_hf.main([*argv, "--trust_remote_code", "true"]) == 0
    assert "processing_kvcap.py" in marker.read_text().split()


def test_a_training_checkpoint_is_named_as_one_with_what_to_load_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = tmp_path / "run" / "checkpoint-300"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text("{}", encoding="utf-8")
    (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "e")]
    assert eval_hf.main(argv) == 2
    error = capsys.readouterr().err
    assert f"{checkpoint} is a training checkpoint" in error and str(tmp_path / "run" / "final") in error
    assert "--resume_from_checkpoint true" in error and "Traceback" not in error


def test_a_missing_split_or_folder_is_one_line_before_the_model_loads(
    checkpoint: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(eval_hf, "load_model_and_processor", must_not_load)
    argv = ["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "e")]
    assert eval_hf.main([*argv, "--data_dir", str(corpus), "--split", "test"]) == 2
    assert f"no usable clips for split 'test' under {corpus}" in capsys.readouterr().err
    assert eval_hf.main([*argv, "--data_dir", str(tmp_path / "no-corpus")]) == 2
    assert f"data folder not found: {tmp_path / 'no-corpus'}" in capsys.readouterr().err
