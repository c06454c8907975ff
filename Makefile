# The two commands of the README:
#   make run   installs what is missing, builds, starts tlsplane-server and an agent with a demo listener
#   make test  installs what is missing, builds (plain, ASan+UBSan, and the libFuzzer targets with
#              clang), runs every test, each fuzz target for 10 s among them
# and for fuzzing longer:
#   make fuzz  builds the fuzz targets and runs each for FUZZ_SECONDS (60) (tests/fuzz/README.md)
JOBS ?= $(shell nproc)
LISTEN ?= 127.0.0.1:7443
DATA_DIR ?= ./var
FUZZ_SECONDS ?= 60
PREFIX ?= /usr/local

.PHONY: all deps build build-asan build-fuzz test fuzz run install format check-format clean

all: build

deps:
	@./scripts/install-deps

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build -j$(JOBS)

build-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTLSPLANE_SANITIZE=ON
	cmake --build build-asan -j$(JOBS)

# Its own tree: clang, libFuzzer, ASan and UBSan on every library.
build-fuzz: deps
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTLSPLANE_FUZZ=ON
	cmake --build build-fuzz -j$(JOBS) --target fuzz

tests/integration/node_modules/.package-lock.json: tests/integration/package-lock.json
	cd tests/integration && npm ci --no-audit --no-fund --loglevel=error

# ctest runs JOBS tests at a time in each tree; the fuzz targets (10 s
# each) run side by side.
test: build build-asan build-fuzz tests/integration/node_modules/.package-lock.json
	ctest --test-dir build -j$(JOBS) --output-on-failure
	ctest --test-dir build-asan -j$(JOBS) --output-on-failure
	ctest --test-dir build-fuzz -j$(JOBS) --output-on-failure

# Each target for FUZZ_SECONDS, JOBS at a time, from a temporary copy of
# its seed corpus; then every regression input replayed.
fuzz: build-fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) ctest --test-dir build-fuzz -j$(JOBS) --output-on-failure

# tlsplane-server, one tlsplane-agent enrolled with a join token, and a demo
# listener (a self-signed certificate uploaded through the API) in front of
# a small HTTP upstream; prints what to try (curl, a live certificate
# rotation). Ctrl-C stops everything. See scripts/demo.
run: build
	DATA_DIR='$(DATA_DIR)' LISTEN='$(LISTEN)' BUILD=./build exec ./scripts/demo run

# The binaries and man pages under PREFIX (DESTDIR honoured, as
# cmake --install does).
install: build
	cmake --install build --prefix '$(PREFIX)'

format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

check-format:
	git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror

clean:
	rm -rf build build-asan build-fuzz
