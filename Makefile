# The two commands of the README:
#   make run   installs what is missing, builds, starts tlsplane-server
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

run: build
	@echo "tlsplane-server: API on $(LISTEN) over TLS, data in $(DATA_DIR) (CA, admin token and"
	@echo "certificate, master key: made on the first start)"
	@echo "try:  grpcurl -cacert $(DATA_DIR)/ca.pem -H \"authorization: Bearer \$$(cat $(DATA_DIR)/admin.token)\" $(LISTEN) list"
	@echo "      grpcurl -cacert $(DATA_DIR)/ca.pem -H \"authorization: Bearer \$$(cat $(DATA_DIR)/admin.token)\" -d '{\"pageSize\": 10}' $(LISTEN) tlsplane.v1.CipherPolicyService/ListCipherPolicies"
	@echo "      grpcurl -cacert $(DATA_DIR)/ca.pem -cert $(DATA_DIR)/admin.pem -key $(DATA_DIR)/admin-key.pem $(LISTEN) tlsplane.v1.AuditService/ListAuditEvents"
	exec ./build/server/tlsplane-server --data-dir $(DATA_DIR) --listen $(LISTEN)

format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

check-format:
	git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror

clean:
	rm -rf build build-asan
