# Thin wrapper over meson. `make run` starts the demo daemon; `make test` is the whole test run.
BUILD ?= build
ASAN ?= build-asan
FUZZ ?= build-fuzz
FUZZ_SECONDS ?= 60
SOURCES = $(shell git ls-files '*.cc' '*.h' 2>/dev/null)

PREFIX ?= /usr/local

.PHONY: all build deps test asan run format format-check tidy bench fuzz install clean

all: build

deps:
	@scripts/install-deps

$(BUILD)/build.ninja:
	@scripts/install-deps
	meson setup $(BUILD)

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

test:
	@test/run.sh

asan:
	@scripts/install-deps
	@[ -f $(ASAN)/build.ninja ] || meson setup $(ASAN) -Db_sanitize=address,undefined \
	  -Db_lundef=false -Dcpp_args=-fno-sanitize-recover=all
	ninja -C $(ASAN) && meson test -C $(ASAN) --print-errorlogs

# Builds only the two binaries it runs (not every test): a first run is a few minutes on 2 cores.
run: $(BUILD)/build.ninja
	ninja -C $(BUILD) aiorpcd aiorpc
	@scripts/run-demo $(BUILD)

install: build
	meson configure $(BUILD) -Dprefix=$(PREFIX) >/dev/null
	meson install -C $(BUILD)

format:
	@scripts/install-deps --dev
	clang-format -i $(SOURCES)

format-check:
	@scripts/install-deps --dev
	clang-format --dry-run --Werror $(SOURCES)

tidy: build
	@scripts/install-deps --dev
	clang-tidy -p $(BUILD) --quiet $(filter %.cc,$(SOURCES))

bench: build
	@bench/run.sh

fuzz:
	@scripts/install-deps --dev
	@[ -f $(FUZZ)/build.ninja ] || CXX=clang++ meson setup $(FUZZ) -Dfuzz=true \
	  -Db_sanitize=address,undefined -Db_lundef=false -Dcpp_args=-fsanitize=fuzzer-no-link
	ninja -C $(FUZZ) test/rpc_fuzz
	mkdir -p $(FUZZ)/fuzz-corpus
	$(FUZZ)/test/rpc_fuzz -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 \
	  $(FUZZ)/fuzz-corpus test/fuzz/corpus

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ)
