# The two commands that set up a fresh machine:
#   make run    install everything and start the app on http://127.0.0.1:7860
#   make test   install everything (Chromium included) and run the whole test suite
.PHONY: run test bench

run:
	bash setup.sh
	.venv/bin/python app.py

# The suite writes several GB of run folders and checkpoints; the trap removes them (and the
# uploads Gradio's test servers keep) however pytest ends, keeping pytest's exit status.
# The data dir goes where users keep theirs (under ~/.cache, outside the temp dir and the repo),
# one per pytest worker. Two workers: one core sat idle through the imports, servers and browsers.
test:
	bash setup.sh --test
	tmp="$$(mktemp -d)"; home="$$HOME/.cache/finetune-lab-test-home-$$$$"; \
	trap 'rm -rf "$$tmp" "$$home"-*' EXIT; \
	FINETUNE_LAB_TEST_HOME="$$home" \
	GRADIO_TEMP_DIR="$$tmp/gradio" GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1 \
		.venv/bin/python -m pytest -q -rs --durations=15 --basetemp="$$tmp/pytest" -n 2 --dist loadgroup --no-loadscope-reorder

bench:
	.venv/bin/python bench/bench_chat.py
	.venv/bin/python bench/bench_train.py
