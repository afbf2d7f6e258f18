# tenant-edge: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: run test lint bench bench-quick bench-catalogue bench-fanout fuzz chaos certs deps build release

## Installs what a fresh machine lacks (cmake for pingora's zlib-ng, a C compiler, openssl;
## curl and python3 drive the HTTP/2 tests; PostgreSQL, whose servers the catalogue's tests
## start themselves; Chromium, the headless browser of the status page's test; moto[server]
## from PyPI, the AWS emulator its tests start).
deps:
	@missing=""; \
	for t in cmake:cmake cc:build-essential openssl:openssl pkg-config:pkg-config curl:curl python3:python3; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; \
	done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi; \
	if ! python3 -c 'import moto.server' 2>/dev/null; then \
	  echo "installing: moto[server] (the AWS emulator of the fan-out tests)"; \
	  python3 -m pip install -q 'moto[server]' || python3 -m pip install -q --break-system-packages 'moto[server]'; \
	fi

build: deps
	$(CARGO) build

## Starts the whole stack on loopback: catalogue, two TCS regions, the edge and the demo shards.
run: build
	$(CARGO) run --quiet -- dev

## Runs every test: unit, property and end-to-end (real processes on loopback).
test: deps
	$(CARGO) test --all-targets

## Fuzzing: the cargo-fuzz targets of every parser that takes untrusted input (fuzz/: host and
## path normalisation, the route file, the cache file, the TCS change stream, tenant documents,
## the HTTP/1.1 head), each for FUZZ_SECS (default 60) from the committed seed corpus
## (fuzz/corpus/; new inputs go to target/fuzz-corpus/), then the differential framing test
## (the lean HTTP/1.1 parser against hyper's) with FUZZ_CASES inputs (default 2 000 000).
## Needs the nightly toolchain and cargo-fuzz (installed when missing). A crash stops it, its
## input in fuzz/artifacts/.
FUZZ_SECS ?= 60
FUZZ_CASES ?= 2000000
FUZZ_TARGETS = host_path route_file cache_file change_stream tenant_doc http1_head
fuzz: deps
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "fuzzing $$t for $(FUZZ_SECS) s"; \
	  $(CARGO) +nightly fuzz run $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECS) -print_final_stats=1 2>&1 | grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|==[0-9]+== ?ERROR|SUMMARY|thread .* panicked)' ; \
	  test "$${PIPESTATUS[0]}" -eq 0 || exit 1; \
	done
	FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --test h1_differential framing_agrees -- --nocapture

## The chaos suite (examples/chaos.rs): a stack of child processes under bounded load; the
## catalogue killed during writes, a TCS region killed and restarted from its snapshot, the edge
## killed and restarted while every TCS is down, the catalogue's disk filled up; after each the
## invariants are checked (no acknowledged write lost, a dense change log, no known tenant
## answered with an error, healthy again within 30 s) and a table printed. About a minute; needs
## root (the catalogue's disk is a small tmpfs).
chaos: build
	$(CARGO) run --quiet --example chaos

## fmt + clippy with warnings denied.
lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## Regenerates the self-signed dev wildcard certificate for *.example.test (valid 10 years).
certs:
	openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
	  -keyout certs/dev.key -out certs/dev.crt \
	  -subj "/CN=*.example.test" \
	  -addext "subjectAltName=DNS:*.example.test,DNS:example.test,DNS:localhost" \
	  -addext "basicConstraints=critical,CA:FALSE" \
	  -addext "extendedKeyUsage=serverAuth"

## The race: tenant-edge against nginx, HAProxy and a bare pingora passthrough, one worker each
## over HTTP/1.1, HTTPS and HTTP/2, plus cold (1M tenants) and churn scenarios (bench/race.py;
## results in bench/results/). About 13 minutes;
## bench-quick (HTTP/1.1 only) about 1.5.
bench: deps
	python3 bench/race.py

bench-quick: deps
	python3 bench/race.py --quick

## The catalogue's stores side by side, SQLite against PostgreSQL with durable commits
## (bench/catalogue_store.rs): PUTs, a long-poll's wake, a bulk import of IMPORT_TENANTS
## (default 1 000 000; a few minutes).
bench-catalogue: deps
	$(CARGO) bench --bench catalogue_store

## The wide fan-out through SNS/SQS on the AWS emulator (bench/fanout.rs): a write until 50
## edges hold it, SNS calls at 100 writes/s, SQS requests of an idle edge over a heartbeat period
## (about 8 minutes).
bench-fanout: deps
	$(CARGO) bench --bench fanout
