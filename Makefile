# The two set-up commands of the README: `make run` and `make test`. Both bootstrap first.
CONFIG ?= etc/telegen/config.yaml
PYTEST_ARGS ?=

.PHONY: bootstrap run test unit deb clean

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	.venv/bin/twistd -n telegen --config $(CONFIG)

test: bootstrap
	@bash scripts/run-tests.sh $(PYTEST_ARGS)

unit: bootstrap
	.venv/bin/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache

# The Debian package: telegen_<version>_<arch>.deb in dist/ (docs/install.md).
deb: bootstrap
	bash scripts/build-deb.sh
