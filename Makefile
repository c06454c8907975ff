# The two commands of the README:
#   make run   installs what is missing, builds, starts tlsplane-server and an agent with a demo listener
#   make test  installs what is missing, builds (plain and ASan+UBSan), runs every test
JOBS ?= $(shell nproc)
LISTEN ?= 127.0.0.1:7443
DATA_DIR ?= ./var

.PHONY: all deps build build-asan test run format check-format clean

all: build

deps:
	@./scripts/install-deps

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build -j$(JOBS)

build-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTLSPLANE_SANITIZE=ON
	cmake --build build-asan -j$(JOBS)

tests/integration/node_modules/.package-lock.json: tests/integration/package-lock.json
	cd tests/integration && npm ci --no-audit --no-fund --loglevel=error

test: build build-asan tests/integration/node_modules/.package-lock.json
	ctest --test-dir build --output-on-failure
	ctest --test-dir build-asan --output-on-failure

# tlsplane-server, one tlsplane-agent enrolled with a join token, and a demo
# listener (a self-signed certificate uploaded through the API) in front of
# a small HTTP upstream; prints what to try (curl, a live certificate
# rotation). Ctrl-C stops everything. See scripts/demo.
run: build
	DATA_DIR='$(DATA_DIR)' LISTEN='$(LISTEN)' BUILD=./build exec ./scripts/demo run

format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

check-format:
	git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror

clean:
	rm -rf build build-asan
