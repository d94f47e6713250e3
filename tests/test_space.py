"""The web demo (app.py): captions a clip as the library does, and works in a real browser (headless Chromium)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from kvcap.demo.corpus import generate_corpus
from kvcap.generation import generate_captions, load_model_and_processor
from kvcap.metrics.korean_meteor.korean_meteor import meteor_scores
from kvcap.space import caption_clip

from .conftest import CHROMIUM_ARGS, REPO_ROOT, needs, tiny_processor

REFERENCE = "화면에는 도형이 하나 있습니다. 빨간색 원이 왼쪽에서 오른쪽으로 이동합니다."


@pytest.fixture(scope="module")
def folder_and_clip(make_tiny_model, tiny_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kvcap-model")
    model = make_tiny_model("mlp_2l").eval()
    model.generation_config.max_new_tokens = 16
    model.save_pretrained(folder)
    tiny_processor(tiny_tokenizer, model.config).save_pretrained(folder)
    corpus = tmp_path_factory.mktemp("clips")
    generate_corpus(corpus, num_train=0, num_val=1, seed=7, workers=1)
    (clip,) = (corpus / "val" / "videos").glob("*.mp4")
    return folder, clip


def test_caption_clip_shows_the_sampled_frames_the_caption_and_meteor(folder_and_clip):
    folder, clip = folder_and_clip
    model, processor = load_model_and_processor(str(folder), device="cpu")
    result = caption_clip(model, processor, str(clip), REFERENCE)
    assert result.frames.shape[0] == 8 and result.frames.dtype == np.uint8
    assert result.caption == generate_captions(model, processor, [str(clip)])[0]
    assert result.meteor == meteor_scores([result.caption], [REFERENCE])["scores"][0]
    assert caption_clip(model, processor, str(clip), "  ").meteor is None  # no reference, no score


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_served(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"app.py did not serve {url} within {seconds} s")


@pytest.mark.slow
def test_the_app_captions_an_uploaded_clip_in_headless_chromium(folder_and_clip, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    needs(sync_playwright is not None, "the playwright package (pip install playwright)")
    chromium = shutil.which("chromium")
    needs(chromium is not None, "Debian's chromium (apt-get install chromium)")
    folder, clip = folder_and_clip
    model, processor = load_model_and_processor(str(folder), device="cpu")
    expected = caption_clip(model, processor, str(clip), REFERENCE)

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "app.py", "--model", str(folder), "--port", str(port), "--device", "cpu"]
    app = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_served(url, app)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load")
            page.locator("input[type=file]").first.set_input_files(str(clip))
            page.get_by_label("참조 캡션 (reference, optional)").fill(REFERENCE)
            page.locator("#caption-button").click()
            page.wait_for_function(
                "() => { const t = document.querySelector('#caption-output textarea'); return t && t.value; }",
                timeout=120_000,
            )
            shown = page.locator("#caption-output textarea").input_value()
            meteor = page.locator("#meteor-output").inner_text()
            page.wait_for_function("() => document.querySelectorAll('.thumbnail-item img').length >= 8")
            thumbnails = page.locator(".thumbnail-item img").count()
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
    assert shown == expected.caption + ("" if expected.finished else " (cut at the length limit)")
    assert f"{expected.meteor:.4f}" in meteor
    assert thumbnails == 8  # the 8 sampled frames
    assert (tmp_path / "app.png").stat().st_size > 10_000
