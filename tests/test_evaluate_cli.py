"""`siftbench evaluate` on anything (run dir, architecture + checkpoint, cached pretrained tag), and the
errors a user meets, each naming what is wrong and how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval_suite import SUITE_YAML, caption_task, colour_task

torch = pytest.importorskip("torch")

from siftbench.benchmark.core.errors import ConfigError, StageError  # noqa: E402
from siftbench.benchmark.experiment.cli import main as cli_main  # noqa: E402
from siftbench.benchmark.stages.models import cached_pretrained, load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, _, _ = load_model("siftbench-tiny")
    path = tmp_path_factory.mktemp("ckpt") / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture
def suite_root(tmp_path: Path) -> Path:
    root = tmp_path / "eval"
    colour_task(root / "colours")
    caption_task(root / "captions")
    (tmp_path / "tiny.yaml").write_text(SUITE_YAML)
    return root


def evaluate(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_architecture_and_checkpoint_writes_datacomp_jsonl(capsys, checkpoint, suite_root, tmp_path):
    code, out, _ = evaluate(capsys, "--model", "siftbench-tiny", "--checkpoint", str(checkpoint), "--suite",
                            str(tmp_path / "tiny.yaml"), "--eval-root", str(suite_root), "--out", str(tmp_path / "o"))
    assert code == 0
    printed = json.loads(out)
    lines = [json.loads(x) for x in (tmp_path / "o" / "eval_results.jsonl").read_text().splitlines()]
    assert [x["key"] for x in lines] == list(printed["tasks"]) == ["colours", "colours_balanced", "captions"]
    assert all(x["metrics"]["main_metric"] == printed["tasks"][x["key"]]["score"] for x in lines)
    assert json.loads((tmp_path / "o" / "evaluation.json").read_text())["average"] == printed["average"]


def test_a_checkpoint_of_another_architecture(capsys, checkpoint, suite_root, tmp_path):
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    state["module.text_projection"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "other.pt")
    code, _, err = evaluate(capsys, "--model", "siftbench-tiny", "--checkpoint", str(tmp_path / "other.pt"),
                            "--suite", str(tmp_path / "tiny.yaml"), "--eval-root", str(suite_root))
    assert code == 2 and "does not fit architecture 'siftbench-tiny'" in err
    assert "pass the --model the checkpoint was trained with" in err


@pytest.mark.parametrize(("remove", "message"), [
    ("colours/classnames.txt", "colours: no classnames.txt (one class name per line"),
    ("colours/test/nshards.txt", "colours: no test/nshards.txt; a clip_benchmark task folder holds"),
])
def test_an_eval_folder_missing_a_file(capsys, checkpoint, suite_root, tmp_path, remove, message):
    (suite_root / remove).unlink()
    code, _, err = evaluate(capsys, "--model", "siftbench-tiny", "--checkpoint", str(checkpoint), "--suite",
                            str(tmp_path / "tiny.yaml"), "--eval-root", str(suite_root))
    assert code == 2 and message in err and "task 'colours'" in err


def test_a_main_metric_the_task_does_not_produce(capsys, checkpoint, suite_root, tmp_path):
    (tmp_path / "bad.yaml").write_text(SUITE_YAML.replace("main_metric: acc1,", "main_metric: acc5,"))
    code, _, err = evaluate(capsys, "--model", "siftbench-tiny", "--checkpoint", str(checkpoint), "--suite",
                            str(tmp_path / "bad.yaml"), "--eval-root", str(suite_root))
    assert code == 2 and "main_metric 'acc5' is not one of" in err and "with 3 classes" in err


def test_pretrained_tags_come_from_the_local_cache_only(capsys, checkpoint, suite_root, tmp_path):
    code, _, err = evaluate(capsys, "--model", "siftbench-tiny", "--pretrained", "laion2b_s34b_b79k",
                            "--suite", str(tmp_path / "tiny.yaml"), "--eval-root", str(suite_root))
    assert code == 2 and "'siftbench-tiny' has no pretrained tag 'laion2b_s34b_b79k'; its tags: none" in err
    with pytest.raises(StageError, match=r"ViT-B-32 'laion2b_s34b_b79k' are not in the local cache .*nothing is downloaded"):
        cached_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"no pretrained tag 'laion9b'; its tags: \[.*'datacomp_m_s128m_b4k'"):
        cached_pretrained("ViT-B-32", "laion9b")
    # A file in the Hugging Face cache's own layout (refs/main -> snapshots/<rev>/) is found, safetensors first.
    repo = tmp_path / "hf" / "models--laion--CLIP-ViT-B-32-DataComp.M-s128M-b4K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors").write_bytes(b"weights")
    path, cfg = cached_pretrained("ViT-B-32", "datacomp_m_s128m_b4k", cache_dir=tmp_path / "hf")
    assert path == str(repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors") and cfg["hf_hub"]
    # A weights file given as the tag loads as it is.
    state = {k.removeprefix("module."): v for k, v in torch.load(checkpoint, weights_only=True)["state_dict"].items()}
    torch.save(state, tmp_path / "weights.pt")
    model, _, _ = load_model("siftbench-tiny", pretrained=str(tmp_path / "weights.pt"))
    assert torch.equal(model.state_dict()["text_projection"], state["text_projection"])


def test_a_scale_override_of_a_fixed_hyperparameter_is_refused(capsys, tmp_path):
    (tmp_path / "pool").mkdir()
    code = cli_main(["run", f"pool={tmp_path / 'pool'}", f"runs_dir={tmp_path / 'runs'}", "scale=toy", "scale.lr=0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "lr=0.5 (scale 'toy' fixes 0.001)" in err and "scale.comparable=false" in err


def test_a_custom_architecture_file_evaluates_by_path(capsys, suite_root, tmp_path):
    """A user's open_clip config that is none of open_clip's names: --model takes its path."""
    import open_clip

    arch = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                            "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    path = tmp_path / "my-clip-64.json"
    path.write_text(json.dumps(arch))
    assert "my-clip-64" not in open_clip.list_models()
    torch.manual_seed(0)
    model, _, _ = load_model(str(path))
    assert model.text_projection.shape == (64, 64)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    code, out, _ = evaluate(capsys, "--model", str(path), "--checkpoint", str(tmp_path / "mine.pt"), "--suite",
                            str(tmp_path / "tiny.yaml"), "--eval-root", str(suite_root))
    assert code == 0
    assert set(json.loads(out)["tasks"]) == {"colours", "colours_balanced", "captions"}


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"embed_dim": 8}', "needs embed_dim, vision_cfg and text_cfg"),
])  # fmt: skip
def test_a_bad_architecture_file_is_one_clear_error(capsys, checkpoint, suite_root, tmp_path, content, message):
    path = tmp_path / "arch.json"
    if content is not None:
        path.write_text(content)
    code, _, err = evaluate(capsys, "--model", str(path), "--checkpoint", str(checkpoint), "--suite",
                            str(tmp_path / "tiny.yaml"), "--eval-root", str(suite_root))
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
