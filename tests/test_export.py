"""kvcap.training.export: pushing the final folder, checked before training against a fake Hub (no network)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub.errors import RepositoryNotFoundError

import train_hf
from kvcap.demo.corpus import generate_corpus
from kvcap.training.export import HubPushError, check_hub_push, push_folder

from .conftest import run_argv


class FakeHub:
    """Stands in for `huggingface_hub.HfApi`: an account, its organisations, the repositories that exist, and
    a record of every call."""

    def __init__(self, name="kim", orgs=("kvcap-lab",), role="write", repos=None, token_works=True):
        self.name, self.orgs, self.role, self.token_works = name, list(orgs), role, token_works
        self.repos: dict[str, bool] = dict(repos or {})  # repo id -> private
        self.calls: list[tuple] = []

    def __call__(self, token=None):
        self.calls.append(("HfApi", token))
        return self

    def whoami(self):
        if not self.token_works:
            raise OSError("Invalid user token.")
        return {
            "name": self.name,
            "orgs": [{"name": org} for org in self.orgs],
            "auth": {"accessToken": {"role": self.role}},
        }

    def repo_info(self, repo_id, repo_type="model"):
        if repo_id not in self.repos:
            response = SimpleNamespace(headers={}, status_code=404, request=None)
            raise RepositoryNotFoundError(f"{repo_id} not found", response=response)
        return SimpleNamespace(private=self.repos[repo_id])

    def create_repo(self, repo_id, exist_ok=False, private=None):
        self.calls.append(("create_repo", repo_id, private))
        self.repos.setdefault(repo_id, bool(private))

    def upload_folder(self, folder_path, repo_id, commit_message):
        self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/1")


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return hub


def test_a_push_that_can_work_passes_the_check(fake_hub: FakeHub):
    check_hub_push("kim/kvcap-mlp", token="hf_x", private=True)
    check_hub_push("kvcap-lab/kvcap-mlp", private=None)
    fake_hub.repos["kim/private-one"] = True
    check_hub_push("kim/private-one", private=True)


@pytest.mark.parametrize(
    ("hub", "repo_id", "private", "message"),
    [
        (FakeHub(token_works=False), "kim/kvcap", None, "does not accept the token"),
        (FakeHub(role="read"), "kim/kvcap", None, "read-only"),
        (FakeHub(), "someone-else/kvcap", None, "cannot create repositories under 'someone-else'"),
        (FakeHub(repos={"kim/kvcap": False}), "kim/kvcap", True, "exists and is public"),
    ],
    ids=["bad-token", "read-only", "foreign-namespace", "public-but-private-asked"],
)
def test_a_push_that_would_fail_is_refused_naming_why(monkeypatch, hub, repo_id, private, message):
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubPushError, match=message) as raised:
        check_hub_push(repo_id, private=private)
    assert repo_id in str(raised.value)


def test_an_offline_hub_is_refused_before_any_call(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        check_hub_push("kim/kvcap")
    assert hub.calls == []


def test_push_folder_creates_the_repository_private_when_asked(fake_hub: FakeHub, tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    url = push_folder(tmp_path, "kim/kvcap-mlp", token="hf_x", private=True)
    assert ("create_repo", "kim/kvcap-mlp", True) in fake_hub.calls and fake_hub.repos["kim/kvcap-mlp"] is True
    assert ("upload_folder", "kim/kvcap-mlp", ["config.json"]) in fake_hub.calls and url.endswith("/commit/1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("push-corpus")
    generate_corpus(root, num_train=4, num_val=2, seed=0)
    return root


def test_training_refuses_a_push_that_would_fail_before_building_the_model(
    tiny_backbones, corpus, tmp_path, monkeypatch
):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub(role="read"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the push was checked")

    monkeypatch.setattr("kvcap.training.run.build_model", must_not_build)
    argv = run_argv(tiny_backbones, corpus, tmp_path / "run", push_to_hub=True, hub_model_id="kim/kvcap-mlp")
    with pytest.raises(HubPushError, match="read-only"):
        train_hf.prepare_run(argv)


@pytest.mark.slow
def test_a_private_run_pushes_its_final_folder_privately(tiny_backbones, corpus, tmp_path, fake_hub):
    argv = run_argv(
        tiny_backbones, corpus, tmp_path / "run", push_to_hub=True, hub_model_id="kim/kvcap-mlp", hub_private_repo=True
    )
    train_hf.main(argv)
    assert ("create_repo", "kim/kvcap-mlp", True) in fake_hub.calls
    uploads = [call for call in fake_hub.calls if call[0] == "upload_folder"]
    assert len(uploads) == 1 and {"config.json", "generation_config.json", "README.md"} <= set(uploads[0][2])
