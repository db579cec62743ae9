"""Eval suites end to end: a tiny clip_benchmark-layout folder, a random siftbench-tiny, clear errors."""

import io
import tarfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from PIL import Image  # noqa: E402

from siftbench.benchmark.core.errors import ConfigError, StageError  # noqa: E402
from siftbench.eval_suite import (  # noqa: E402
    TASK_TYPES,
    EvalDataError,
    EvalTask,
    MissingDatasetError,
    TaskResult,
    evaluate_model,
    load_suite,
    open_task,
    summarize,
)
from siftbench.eval_suite.data import SkipCounter, iter_samples  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(rgb: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def write_task(folder: Path, shards: list[list[tuple[str, bytes]]], classnames=None, templates=None,
               retrieval: bool = False) -> Path:
    """A task folder in clip_benchmark's layout, member by member (so tests can plant damage)."""
    (folder / "test").mkdir(parents=True)
    for i, members in enumerate(shards):
        write_tar(folder / "test" / f"{i}.tar", members)
    (folder / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    if retrieval:
        (folder / "dataset_type.txt").write_text("retrieval\n")
    if classnames is not None:
        (folder / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
    if templates is not None:
        (folder / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    return folder


def colour_task(folder: Path, per_class: int = 3, damage: bool = False) -> Path:
    """3 classes over 2 shards; with ``damage``: one undecodable image and one out-of-range label."""
    names = list(COLOURS)
    samples = [(f"s{c}{i}", png(COLOURS[n]), str(c)) for i in range(per_class) for c, n in enumerate(names)]
    shards: list[list[tuple[str, bytes]]] = [[], []]
    for j, (key, image, label) in enumerate(samples):
        shards[j % 2] += [(f"{key}.png", image), (f"{key}.cls", label.encode())]
    if damage:
        shards[1] += [("bad0.png", b"\x89PNG not really"), ("bad0.cls", b"0")]
        shards[1] += [("bad1.png", png((1, 2, 3))), ("bad1.cls", b"7")]
    return write_task(folder, shards, classnames=names, templates=["a {c} square.", "something {c}."])


def caption_task(folder: Path) -> Path:
    members = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        members += [(f"r{i}.png", png(rgb)), (f"r{i}.txt", f"a {name} square\na square that is {name}".encode())]
    return write_task(folder, [members], retrieval=True)


SUITE_YAML = """
name: tiny
version: 3
tasks:
  - {name: colours, path: colours, type: zeroshot_classification, main_metric: acc1, groups: [headline], version: 1}
  - {name: colours_balanced, path: colours, type: zeroshot_classification, main_metric: mean_per_class_recall, groups: [headline, fine], version: 2}
  - {name: captions, path: captions, type: zeroshot_retrieval, main_metric: mean_recall@1, groups: [retrieval], version: 1}
"""


@pytest.fixture(scope="module")
def tiny_model():
    from siftbench.benchmark.stages.models import load_model

    torch.manual_seed(0)
    return load_model("siftbench-tiny")


@pytest.fixture
def eval_root(tmp_path: Path) -> Path:
    root = tmp_path / "eval"
    colour_task(root / "colours", damage=True)
    caption_task(root / "captions")
    (tmp_path / "tiny.yaml").write_text(SUITE_YAML)
    return root


def test_evaluate_model_end_to_end(tiny_model, eval_root: Path):
    suite = load_suite(eval_root.parent / "tiny.yaml", eval_root)
    assert [t.name for t in suite.tasks] == ["colours", "colours_balanced", "captions"]
    tasks = evaluate_model(*tiny_model, suite, batch_size=4, progress=False)
    assert list(tasks) == ["colours", "colours_balanced", "captions"]
    for name, entry in tasks.items():
        assert {"type", "main_metric", "score", "metrics", "chance", "groups", "version", "dataset",
                "num_samples", "skipped"} <= set(entry), name
        assert entry["score"] == entry["metrics"][entry["main_metric"]]
        assert all(0.0 <= v <= 1.0 for v in entry["metrics"].values()), entry["metrics"]
    colours = tasks["colours"]
    assert colours["num_samples"] == 9 and colours["dataset"] == "colours" and colours["version"] == 1
    assert colours["skipped"] == 2
    assert colours["skipped_reasons"] == {"undecodable_image": 1, "bad_label": 1}
    assert "acc5" not in colours["metrics"]  # 3 classes
    assert colours["chance"] == pytest.approx(1 / 3)
    assert tasks["colours_balanced"]["main_metric"] == "mean_per_class_recall"
    captions = tasks["captions"]
    assert captions["num_samples"] == 3 and captions["skipped"] == 0
    assert captions["chance"] == pytest.approx(1 / 3)  # recall@1 of random scores over 3 images
    assert captions["score"] == pytest.approx(
        (captions["metrics"]["image_retrieval_recall@1"] + captions["metrics"]["text_retrieval_recall@1"]) / 2
    )
    assert captions["metrics"]["image_retrieval_recall@5"] == 1.0  # only 3 images to rank

    summary = summarize(tasks, suite)
    scores = [e["score"] for e in tasks.values()]
    assert summary["average"] == pytest.approx(sum(scores) / 3)
    assert summary["groups"]["headline"] == pytest.approx((scores[0] + scores[1]) / 2)
    assert summary["groups"]["retrieval"] == pytest.approx(scores[2])
    assert summary["skipped"] == {}
    assert suite.identity()["tasks"] == {"colours": 1, "colours_balanced": 2, "captions": 1}


def test_results_do_not_depend_on_batch_size_or_workers(tiny_model, eval_root: Path):
    suite = load_suite(eval_root.parent / "tiny.yaml", eval_root)
    one = evaluate_model(*tiny_model, suite, batch_size=256, progress=False)
    other = evaluate_model(*tiny_model, suite, batch_size=2, progress=False, num_workers=2)
    for name in one:
        assert one[name]["metrics"] == pytest.approx(other[name]["metrics"], abs=1e-9), name
        assert one[name]["skipped_reasons"] == other[name]["skipped_reasons"]


def test_a_new_task_type_plugs_in(tiny_model, tmp_path: Path):
    @TASK_TYPES.register("test_count_images")
    class CountImages(EvalTask):
        dataset_type = "classification"

        def metric_names(self, data):
            return ("fraction_kept",)

        def evaluate(self, model, preprocess, tokenizer, data, **_):
            skipped = SkipCounter()
            n = sum(1 for _ in iter_samples(data, skipped=skipped))
            return TaskResult({"fraction_kept": n / (n + skipped.total)}, n, skipped)

    colour_task(tmp_path / "colours", damage=True)
    (tmp_path / "s.yaml").write_text(
        "name: s\nversion: 1\ntasks:\n"
        "  - {name: c, path: colours, type: test_count_images, main_metric: fraction_kept, version: 1}\n"
    )
    tasks = evaluate_model(*tiny_model, load_suite(tmp_path / "s.yaml", tmp_path), progress=False)
    assert tasks["c"]["score"] == pytest.approx(10 / 11)  # the out-of-range label is not counted as usable


def test_damaged_tar_is_reported_by_shard(tmp_path: Path):
    folder = colour_task(tmp_path / "colours")
    shard = folder / "test" / "1.tar"
    # 2048 bytes per sample (header + block for .png and .cls): cut after the second sample's image
    shard.write_bytes(shard.read_bytes()[: 2048 + 1024 + 100])
    skipped = SkipCounter()
    samples = list(iter_samples(open_task(folder), skipped=skipped))
    assert skipped.damaged_shards == ["1.tar"]
    assert len(samples) == 5 + 1  # shard 0 whole, shard 1's first sample
    assert skipped.reasons == {"no_label": 1}  # the sample cut in half


def test_missing_classnames(tmp_path: Path):
    folder = colour_task(tmp_path / "colours")
    (folder / "classnames.txt").unlink()
    with pytest.raises(EvalDataError, match=r"colours: no classnames.txt"):
        open_task(folder)


def test_missing_nshards(tmp_path: Path):
    folder = colour_task(tmp_path / "colours")
    (folder / "test" / "nshards.txt").unlink()
    with pytest.raises(EvalDataError, match=r"colours: no test/nshards.txt"):
        open_task(folder)


def test_nshards_must_match_the_tars(tmp_path: Path):
    folder = colour_task(tmp_path / "colours")
    (folder / "test" / "nshards.txt").write_text("3\n")
    with pytest.raises(EvalDataError, match=r"says 3 shard\(s\) but 2.tar missing"):
        open_task(folder)
    (folder / "test" / "nshards.txt").write_text("1\n")
    with pytest.raises(EvalDataError, match=r"1.tar not counted in it"):
        open_task(folder)


def test_missing_folder_is_an_error_unless_allowed(eval_root: Path):
    yaml_file = eval_root.parent / "tiny.yaml"
    yaml_file.write_text(SUITE_YAML + "  - {name: gone, path: gone, type: zeroshot_retrieval, "
                         "main_metric: mean_recall@1, version: 1, source: hf://datasets/x/gone}\n")
    with pytest.raises(MissingDatasetError, match=r"missing under .*eval: gone \(gone, from hf://datasets/x/gone\); or pass allow_missing"):
        load_suite(yaml_file, eval_root)
    suite = load_suite(yaml_file, eval_root, allow_missing=True)
    assert [t.name for t in suite.tasks] == ["colours", "colours_balanced", "captions"]
    assert suite.skipped == {"gone": f"missing: {eval_root / 'gone'}"}
    assert suite.identity()["skipped"] == suite.skipped


@pytest.mark.parametrize(
    ("task", "error", "message"),
    [
        ("{name: c, path: colours, type: zeroshot_classification, main_metric: acc5, version: 1}",
         ConfigError, "main_metric 'acc5' is not one of .* with 3 classes"),
        ("{name: c, path: colours, type: zeroshot_clasification, main_metric: acc1, version: 1}",
         ConfigError, "Did you mean 'zeroshot_classification'"),
        ("{name: c, path: colours, type: zeroshot_retrieval, main_metric: mean_recall@1, version: 1}",
         EvalDataError, "holds a classification dataset"),
        ("{name: c, path: colours, type: zeroshot_classification, main_metrc: acc1, version: 1}",
         ConfigError, "missing key.*main_metric"),
        ("{name: c, path: colours, type: zeroshot_classification, main_metric: acc1, version: '1'}",
         ConfigError, "version must be an int"),
    ],
)
def test_suite_definition_errors(tmp_path: Path, task: str, error: type, message: str):
    colour_task(tmp_path / "colours")
    (tmp_path / "s.yaml").write_text(f"name: s\nversion: 1\ntasks:\n  - {task}\n")
    with pytest.raises(error, match=message):
        load_suite(tmp_path / "s.yaml", tmp_path)


def test_unknown_suite_name(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"Unknown eval suite 'wrold'\. Did you mean 'world'"):
        load_suite("wrold", tmp_path)


def test_shipped_world_suite(tmp_path: Path):
    for name in ("shapes", "colours", "shape_colour", "tail_shapes", "digits", "digits_real"):
        colour_task(tmp_path / name)
    caption_task(tmp_path / "retrieval")
    suite = load_suite("world", tmp_path)
    assert [t.name for t in suite.tasks] == ["shapes", "colours", "shape_colour", "tail_shapes", "retrieval",
                                             "digits", "digits_real"]
    assert {t.name: t.main_metric for t in suite.tasks}["shape_colour"] == "mean_per_class_recall"
    # Saturated tasks leave the headline by rule, in the table; the digit tasks are probes (near chance at tiny).
    assert [t.name for t in suite.tasks if "headline" not in t.groups] == ["digits", "digits_real"]
    assert suite.identity()["hash"] == load_suite("world", tmp_path).identity()["hash"]


def test_shipped_datacomp_suite(tmp_path: Path):
    with pytest.raises(MissingDatasetError, match=r"(?s)37 eval task folder.*wds_cars_test.*download_evalsets.py"):
        load_suite("datacomp", tmp_path)
    suite = load_suite("datacomp", tmp_path, allow_missing=True)
    assert suite.tasks == [] and len(suite.skipped) == 38
    unsupported = sorted(k for k, why in suite.skipped.items() if why.startswith("not supported"))
    assert unsupported == ["winogavil"]  # worst-group tasks are scored (group_field), only WinoGAViL is not
    worst = {t: why for t, why in suite.skipped.items() if t.startswith(("fairness/", "wilds/fmow"))}
    assert all(why.startswith("missing") for why in worst.values()) and len(worst) == 3
    # A downloaded task is checked like any other folder.
    colour_task(tmp_path / "wds_vtab-pets_test")
    suite = load_suite("datacomp", tmp_path, allow_missing=True)
    assert [(t.name, t.main_metric) for t in suite.tasks] == [("vtab/pets", "mean_per_class_recall")]


def test_evaluate_checkpoint_round_trip_and_mismatch(tiny_model, eval_root: Path, tmp_path: Path):
    from siftbench.benchmark.stages.evaluate import evaluate_checkpoint

    model = tiny_model[0]
    suite = load_suite(eval_root.parent / "tiny.yaml", eval_root)
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    direct = evaluate_model(*tiny_model, suite, progress=False)
    loaded = evaluate_checkpoint("siftbench-tiny", checkpoint, suite, progress=False)
    assert {k: v["metrics"] for k, v in loaded.items()} == {k: v["metrics"] for k, v in direct.items()}

    state = model.state_dict()
    state["text_projection"] = torch.zeros(3, 3)
    torch.save(state, checkpoint)
    with pytest.raises(StageError, match="does not fit architecture 'siftbench-tiny'"):
        evaluate_checkpoint("siftbench-tiny", checkpoint, suite, progress=False)


def test_evaluate_main_reads_a_run_directory(tiny_model, eval_root: Path, tmp_path: Path):
    import argparse
    import json

    from siftbench.benchmark.experiment.evaluate_run import evaluate_main

    run_dir = tmp_path / "runs" / "r"
    (run_dir / "train").mkdir(parents=True)
    torch.save(tiny_model[0].state_dict(), run_dir / "train" / "final.pt")
    (run_dir / "config.yaml").write_text(f"eval_root: {eval_root}\npool: null\nscale: {{model: siftbench-tiny}}\n")
    (run_dir / "results.json").write_text(json.dumps({"model": {"arch": "siftbench-tiny", "checkpoint": "train/final.pt"}}))
    args = argparse.Namespace(run_dir=run_dir, model=None, checkpoint=None, pretrained=None,
                              suite=str(eval_root.parent / "tiny.yaml"), eval_root=None, device="cpu")
    out = evaluate_main(args)
    assert out["model"]["checkpoint"] == str(run_dir / "train" / "final.pt")
    assert list(out["tasks"]) == ["colours", "colours_balanced", "captions"]
    assert out["average"] == pytest.approx(sum(t["score"] for t in out["tasks"].values()) / 3)
    assert out["suite"]["name"] == "tiny"


def npy(*values: int) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.array(values, dtype=np.int64))
    return buffer.getvalue()


def grouped_task(folder: Path) -> Path:
    """3 colour classes, 2 samples each; .npy = (region, year): regions 0 and 1, and 5 for one sample."""
    members = []
    for i, (c, name) in enumerate([(c, n) for c, n in enumerate(COLOURS) for _ in range(2)]):
        region = 5 if i == 5 else i % 2
        members += [(f"g{i}.png", png(COLOURS[name])), (f"g{i}.cls", str(c).encode()), (f"g{i}.npy", npy(region, 2016))]
    members += [("g9.png", png((1, 2, 3))), ("g9.cls", b"0")]  # no .npy: skipped, counted
    return write_task(folder, [members], classnames=list(COLOURS), templates=["a {c} square."])


GROUPED_YAML = """
name: grouped
version: 1
tasks:
  - {name: regions, path: regions, type: zeroshot_classification, main_metric: acc1_worst_group, group_field: 0, version: 1, key: wilds/fmow, title: FMoW}
  - {name: regions_no_other, path: regions, type: zeroshot_classification, main_metric: acc1_worst_group, group_field: 0, exclude_groups: [5], version: 1}
  - {name: plain, path: regions, type: zeroshot_classification, main_metric: acc1, version: 1}
"""


def test_worst_group_task_reads_groups_from_npy_and_exports_datacomp_jsonl(tiny_model, tmp_path: Path):
    import json

    from siftbench.eval_suite import write_eval_results_jsonl

    grouped_task(tmp_path / "regions")
    (tmp_path / "g.yaml").write_text(GROUPED_YAML)
    suite = load_suite(tmp_path / "g.yaml", tmp_path)
    tasks = evaluate_model(*tiny_model, suite, batch_size=4, progress=False)
    regions, no_other, plain = tasks["regions"], tasks["regions_no_other"], tasks["plain"]
    assert regions["skipped_reasons"] == {"no_group": 1} and regions["num_samples"] == 6
    assert plain["skipped"] == 0 and plain["num_samples"] == 7  # without group_field the .npy is not needed
    m = regions["metrics"]
    assert set(m) >= {"acc1_group_0", "acc1_group_1", "acc1_group_5", "acc1_worst_group"}
    assert regions["score"] == m["acc1_worst_group"] == min(m["acc1_group_0"], m["acc1_group_1"], m["acc1_group_5"])
    assert no_other["score"] == min(m["acc1_group_0"], m["acc1_group_1"]) and "acc1_group_5" not in no_other["metrics"]

    path = write_eval_results_jsonl(tmp_path / "eval_results.jsonl", tasks, suite)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["key"], r["dataset"]) for r in lines] == [("wilds/fmow", "FMoW"), ("regions_no_other", "regions_no_other"),
                                                         ("plain", "plain")]
    assert set(lines[0]) == {"key", "dataset", "metrics"}
    assert lines[0]["metrics"]["main_metric"] == regions["score"]
    assert lines[2]["metrics"] == {**plain["metrics"], "main_metric": plain["metrics"]["acc1"]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("main_metric: acc1_worst_group", r"main_metric 'acc1_worst_group' is not one of .*need group_field"),
        ("main_metric: acc1, group_field: -1", "group_field must be the index"),
        ("main_metric: acc1, exclude_groups: [5]", "exclude_groups needs group_field"),
        ("main_metric: acc5_worst_group, group_field: 0", r"'acc5_worst_group' is not one of .* with 3 classes"),
    ],
)
def test_worst_group_definition_errors(tmp_path: Path, extra: str, message: str):
    grouped_task(tmp_path / "regions")
    (tmp_path / "s.yaml").write_text(
        f"name: s\nversion: 1\ntasks:\n  - {{name: r, path: regions, type: zeroshot_classification, {extra}, version: 1}}\n")
    with pytest.raises(ConfigError, match=message):
        load_suite(tmp_path / "s.yaml", tmp_path)


def test_a_task_type_that_does_not_produce_its_main_metric(tiny_model, tmp_path: Path):
    @TASK_TYPES.register("forgetful_classification")
    class Forgetful(EvalTask):
        def metric_names(self, data):
            return ("acc1",)

        def evaluate(self, model, preprocess, tokenizer, data, **kwargs):
            return TaskResult({"accuracy": 0.5}, 1, SkipCounter())

    try:
        colour_task(tmp_path / "colours")
        (tmp_path / "s.yaml").write_text("name: s\nversion: 1\ntasks:\n  - {name: f, path: colours, "
                                         "type: forgetful_classification, main_metric: acc1, version: 1}\n")
        suite = load_suite(tmp_path / "s.yaml", tmp_path)
        with pytest.raises(StageError, match=r"produced \['accuracy'\], not its main metric 'acc1'"):
            evaluate_model(*tiny_model, suite, progress=False)
    finally:
        TASK_TYPES._items.pop("forgetful_classification", None)


def test_summary_names_groups_missing_a_skipped_task(tmp_path: Path):
    colour_task(tmp_path / "wds_vtab-pets_test")
    suite = load_suite("datacomp", tmp_path, allow_missing=True)
    summary = summarize({"vtab/pets": {"score": 0.5, "groups": ["vtab"]}}, suite)
    assert summary["average"] == 0.5 and summary["groups"] == {"vtab": 0.5}
    assert len(summary["incomplete_groups"]["vtab"]) == 12 and "vtab/pets" not in summary["incomplete_groups"]["vtab"]
    assert summary["incomplete_groups"]["retrieval"] == ["flickr30k", "mscoco", "winogavil"]
