# Quick start: `make run` and `make test` on a fresh Debian 12 machine.
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS ?= $(shell nproc)
MODEL ?= models/strata-default.gguf
FUZZ_SECONDS ?= 20

.PHONY: all setup build run test test-release test-asan test-fuzz bench clean

all: build

setup:
	@scripts/setup.sh

build: setup
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

run: build
	$(BUILD)/strata generate -m $(MODEL) -p "It is a truth universally acknowledged" -n 64 --temp 0.7 --seed 7 --repeat-penalty 1.1

test: build
	@$(MAKE) --no-print-directory test-release test-asan test-fuzz

test-release:
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

test-asan:
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSTRATA_SANITIZE=ON \
	  -DCMAKE_CXX_FLAGS="-O1" >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 STRATA_SANITIZED=1 ctest --output-on-failure -j$(JOBS)

test-fuzz:
	@CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSTRATA_FUZZ=ON \
	  -DSTRATA_SANITIZE=ON -DSTRATA_TESTS=OFF -DCMAKE_CXX_FLAGS="-O1" >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS) --target fuzzers
	scripts/run_fuzzers.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
