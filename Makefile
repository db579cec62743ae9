# The two commands of the README:  `make demo`  and  `make test`.  Both set everything up on a fresh clone.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.siftbench-installed
# img2dataset's albumentations would check PyPI for updates on import.
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test lint bench browser baselines filters-table clean

# torch first, pinned, from the machine's local wheels (pip finds them; uv/poetry would download ~3 GB).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[ml,dev,download,ray]'
	touch $(STAMP)

setup: $(STAMP)

# The browser test needs a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: setup
	$(VENV)/bin/siftbench baselines --seeds 0 --strategies no_filter random clip_score scale=demo

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/siftbench bench

# README's results table: seeds 3-5, fresh (the world was calibrated on seeds 0-2); ~1.5 h on 2 idle cores.
baselines: setup
	$(VENV)/bin/siftbench baselines --seeds 3 4 5 --strategies no_filter random clip_score_ref100 clip_score_ref500 clip_score clip_score_long oracle scale=tiny --out docs/results/world-tiny.md

filters-table: setup
	$(VENV)/bin/siftbench baselines --experiment filters --seeds 0 1 2 --strategies clip_score clip_balance clip_resample clip_resample_t300 dedup_clip_balance dedup_clip_resample clip_dedup_resample dedup_clip decontam_clip scale=tiny --out docs/results/filters-tiny.md

clean:
	rm -rf runs site .pytest_cache
