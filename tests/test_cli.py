"""The command line: clear one-line errors (exit 2), never a bare traceback."""

import numpy as np

from siftbench.benchmark.experiment.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_stages(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 1
    for command in ("run", "baselines", "world", "filter", "embed", "reshard", "train", "evaluate", "scales"):
        assert command in out


def test_missing_pool_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "filter", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "siftbench: error:" in err and "does not exist" in err and "Traceback" not in err


def test_unknown_filter_suggests(capsys, tmp_path):
    from siftbench.benchmark.perf.bench import make_metadata_pool

    pool = make_metadata_pool(tmp_path / "pool", 50, files=1)
    code, _, err = run_cli(capsys, "filter", str(pool), "--out", str(tmp_path / "o"), "filter.name=radnom")
    assert code == 2
    assert "Unknown filter 'radnom'. Did you mean 'random'?" in err


def test_unknown_config_group_option_lists_choices(capsys):
    code, _, err = run_cli(capsys, "run", "filter=clip_scor", "--show-config")
    assert code == 2
    assert "clip_score" in err and "Traceback" not in err


def test_a_threshold_alone_is_datacomps_rule(capsys, tmp_path):
    """clip_score's config sets a default fraction; a threshold given alone replaces it (DataComp's LAION-style
    rule), and the subset is exactly the rows with score >= threshold."""
    import pyarrow.parquet as pq

    from siftbench.benchmark.core.uids import hex_to_uids, read_subset, sort_uids
    from siftbench.benchmark.perf.bench import make_metadata_pool

    pool = make_metadata_pool(tmp_path / "pool", 400, files=3)
    code, out, err = run_cli(capsys, "filter", str(pool), "--out", str(tmp_path / "o"), "filter=clip_score",
                             "filter.column=clip_b32_similarity_score", "filter.threshold=0.25")
    assert code == 0, err
    table = pq.read_table(pool / "metadata")
    scores = table.column("clip_b32_similarity_score").to_numpy()
    wanted = sort_uids(hex_to_uids(table.column("uid").filter(scores >= 0.25)))
    subset = read_subset(tmp_path / "o" / "subset.npy")
    assert 100 < len(subset) == int((scores >= 0.25).sum()) < 300
    assert np.array_equal(subset, wanted)
    assert '"threshold": 0.25' in out and '"fraction": null' in out


def test_threshold_and_fraction_both_given_is_an_error(capsys, tmp_path):
    from siftbench.benchmark.perf.bench import make_metadata_pool

    pool = make_metadata_pool(tmp_path / "pool", 50, files=1)
    code, _, err = run_cli(capsys, "filter", str(pool), "--out", str(tmp_path / "o"), "filter=clip_score",
                           "filter.column=clip_b32_similarity_score", "filter.threshold=0.3", "filter.fraction=0.3")
    assert code == 2
    assert "exactly one of threshold= or fraction=" in err


def test_reshard_refuses_bad_subsets(capsys, tmp_path):
    from siftbench.benchmark.perf.bench import make_metadata_pool

    pool = make_metadata_pool(tmp_path / "pool", 10, files=1)
    np.save(tmp_path / "int64.npy", np.arange(3))
    code, _, err = run_cli(capsys, "reshard", str(pool), str(tmp_path / "int64.npy"), "--out", str(tmp_path / "s"))
    assert code == 2 and "dtype int64" in err


def write_long_captions_plugin(path, name: str, min_words: int):
    """A plugin file: one filter that keeps captions of at least ``min_words`` words."""
    path.write_text(
        "from dataclasses import dataclass\n"
        "from siftbench.benchmark.core.filtering import Decision, Filter, register_filter\n"
        f"@register_filter({name!r})\n"
        "@dataclass\n"
        "class LongCaptions(Filter):\n"
        f"    min_words: int = {min_words}\n"
        "    def columns(self):\n"
        "        return ('text',)\n"
        "    def score(self, batch):\n"
        "        return batch.table.assign(words=batch.table.text.str.split().str.len())[['words']]\n"
        "    def select(self, values, uids, ctx):\n"
        "        return Decision.from_mask(values.words.to_numpy() >= self.min_words, 'short_caption')\n"
    )
    return path


def test_plugin_filter_from_a_file(capsys, tmp_path):
    from siftbench.benchmark.perf.bench import make_metadata_pool

    plugin = write_long_captions_plugin(tmp_path / "my_filters.py", "long_captions_test", min_words=4)
    pool = make_metadata_pool(tmp_path / "pool", 20, files=1)
    code, out, err = run_cli(capsys, "filter", str(pool), "--out", str(tmp_path / "o"), f"plugins=[{plugin}]",
                             "filter.name=long_captions_test", "+filter.min_words=4")
    assert code == 0, err
    assert '"kept": 20' in out  # "a photo of something" has 4 words


def test_every_argument_has_help_text():
    import argparse

    from siftbench.benchmark.experiment.cli import build_parser

    def undocumented(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from undocumented(sub, f"{path} {name}")
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(undocumented(build_parser(), "siftbench")) == []


def test_seeds_then_overrides(capsys, tmp_path):
    # argparse hands `scale=toy` to --seeds; it must reach the overrides, not fail as "invalid int value".
    code, _, err = run_cli(capsys, "baselines", "--seeds", "0", "1", "scale=toy", f"runs_dir={tmp_path}",
                           "--strategies", "no_filter", "--collect-only")
    # --collect-only on an empty runs_dir names the runs it looked for: both seeds, at the toy scale.
    assert code == 2 and "no_filter-toy-s0" in err and "no_filter-toy-s1" in err, err


def test_a_bad_seed_is_one_clear_error(capsys):
    code, _, err = run_cli(capsys, "baselines", "--seeds", "0", "-1", "scale=toy", "--collect-only")
    assert code == 2 and "'-1' is not a seed" in err and err.count("\n") == 1


def test_leaderboard_show_of_an_unknown_scale_suggests(capsys, tmp_path):
    code, _, err = run_cli(capsys, "leaderboard", "show", "--scale", "tinyy", "--store", str(tmp_path / "b.sqlite"))
    assert code == 2 and "unknown scale 'tinyy'. Did you mean 'tiny'?" in err


def test_a_plugin_filter_is_chosen_like_a_built_in_one(capsys, tmp_path):
    """The README's form: plugins=[file.py] filter=<its name> filter.<field>=..., no filter.name= or +."""
    from siftbench.benchmark.perf.bench import make_metadata_pool

    plugin = write_long_captions_plugin(tmp_path / "readme_plugin.py", "readme_long_captions", min_words=2)
    pool = make_metadata_pool(tmp_path / "pool", 20, files=1)
    code, out, err = run_cli(capsys, "filter", str(pool), "--out", str(tmp_path / "o"), f"plugins=[{plugin}]",
                             "filter=readme_long_captions", "filter.min_words=5")
    assert code == 0, err
    assert '"kept": 0' in out  # "a photo of something" has 4 words, fewer than 5
