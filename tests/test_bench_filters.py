"""The filter benchmark's caption-matching section runs and agrees with its one-caption-at-a-time reference."""

from siftbench.benchmark.perf.bench_filters import measure_concept_matching


def test_concept_matching_agrees_with_one_caption_at_a_time():
    result = measure_concept_matching(entries=100, captions=3000)
    assert result["same_matches_on_sample"] is True
    assert result["matches_per_caption"] > 0
    assert result["captions_per_s"] > 0 and result["reference_captions_per_s"] > 0
