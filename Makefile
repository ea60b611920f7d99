# sluice: `make demo` and `make test` do all the set-up a fresh machine needs.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
FUNCTION ?= ingest-http
EVENT ?= events/ingest-http.json
ARCH ?= x86_64

.PHONY: help setup stack stack-down lint validate build-local test fuzz demo bench build deploy watch invoke clean

help:
	@echo "make demo        stream a generated 1 GiB JSON document into local S3 through ingest-http"
	@echo "make test        lint, build, start local servers, run every test"
	@echo "make lint        rustfmt + clippy (warnings denied)"
	@echo "make fuzz        every cargo-fuzz target for FUZZ_SECONDS (default 60) each; needs nightly"
	@echo "make stack       start local Garage + moto (make stack-down stops them)"
	@echo "make validate    offline checks of the SAM template (cfn-lint, sam validate --lint, policy check)"
	@echo "make bench       sluice against boto3, smart_open, aws cli and rclone in a 256 MB / 14.5% CPU box"
	@echo "make build       cargo lambda build (ARCH=arm64 for Graviton)"
	@echo "make deploy      sam build (cargo-lambda, arm64) + sam deploy --guided; needs AWS credentials"
	@echo "make watch       cargo lambda watch against the local stack, with what events/ need"
	@echo "make invoke      cargo lambda invoke FUNCTION=$(FUNCTION) EVENT=$(EVENT)"

setup:
	bash scripts/setup.sh

stack: setup
	bash scripts/stack.sh up

stack-down:
	bash scripts/stack.sh down

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --release -- -D warnings

validate: setup
	bash scripts/validate.sh

build-local:
	cargo build --release --workspace --bins

test:
	bash scripts/test.sh

# Not part of `make test` or CI: each target of fuzz/ for FUZZ_SECONDS (default 60), on nightly.
# The committed corpus is replayed on stable by `make test` (shared/tests/fuzz_corpus.rs).
fuzz:
	bash scripts/fuzz.sh

demo:
	bash scripts/demo.sh

bench:
	bash bench/run.sh

# Lambda packages (profile `lambda`: thin LTO): target/lambda/<function>/bootstrap. arm64 needs the rustup target
# aarch64-unknown-linux-gnu, which this machine may not be able to fetch.
build: setup
	PATH="$(VENV)/bin:$$PATH" cargo lambda build --profile lambda $(if $(filter arm64,$(ARCH)),--arm64,--x86-64)

# Needs AWS credentials and the aarch64-unknown-linux-gnu rustup target; asks for the stack's
# parameters (infra/README.md explains them).
deploy: setup validate
	PATH="$(VENV)/bin:$$PATH" sam build -t infra/template.yaml --beta-features
	PATH="$(VENV)/bin:$$PATH" sam deploy --guided

# The functions under cargo-lambda's emulator against the local stack, with what the sample
# events need (scripts/watch.sh); `make invoke` in another shell.
watch:
	bash scripts/watch.sh

invoke: setup
	PATH="$(VENV)/bin:$$PATH" cargo lambda invoke $(FUNCTION) --invoke-port $(or $(WATCH_PORT),9000) --data-file $(EVENT) --output-format json

clean:
	bash scripts/stack.sh down --wipe || true
	cargo clean
