#!/bin/sh
# Runs one libFuzzer target for a bounded time from a temporary copy of
# its seed corpus, so that the committed corpus never changes:
#   run.sh BINARY CORPUS_DIR SECONDS ARTIFACT_DIR
# FUZZ_SECONDS in the environment overrides SECONDS (make fuzz: 60);
# FUZZ_TIMEOUT is the longest one input may take (default 60 s) before it
# counts as a finding. tests/fuzz/<target>.dict is used when it exists. An
# input that crashes, leaks, trips a sanitizer or times out is written to
# ARTIFACT_DIR and the run fails.
set -eu
bin=$1
corpus=$2
seconds=${FUZZ_SECONDS:-$3}
artifacts=$4
name=$(basename "$bin")
if [ ! -x "$bin" ]; then
  echo "$name: $bin is not built (cmake --build build-fuzz --target fuzz)" >&2
  exit 1
fi
if [ ! -d "$corpus" ] || [ -z "$(ls -A "$corpus")" ]; then
  echo "$name: no seed corpus in $corpus" >&2
  exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/tlsplane-$name.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
cp "$corpus"/* "$work"/
mkdir -p "$artifacts"
dict=$(dirname "$0")/$name.dict
set -- -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-60}" -print_final_stats=1 \
  -artifact_prefix="$artifacts/"
[ -f "$dict" ] && set -- "$@" -dict="$dict"
echo "$name: fuzzing for $seconds s from $(ls "$corpus" | wc -l) seeds"
rc=0
"$bin" "$@" "$work" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "$name: FAILED (exit $rc); the input is in $artifacts/. Replay it with" \
    "\`$bin FILE\`, fix the cause, and keep it as a regression input:" \
    "cp FILE tests/fuzz/regressions/$name/ (tests/fuzz/README.md)" >&2
fi
exit "$rc"
