#!/usr/bin/env bash
# Python tools the tests run, pinned, in a venv under EVIO_PY_TOOLS (default
# ~/.cache/evio/py-tools): the deploy/ checks (node/tests/deploy_manifests.rs) use
# kubernetes-validate (Kubernetes JSON schemas shipped inside the package, 1.25-1.37:
# validation is offline) and yamllint; the API's OpenAPI document (api/tests/openapi.rs) is
# checked with openapi-spec-validator and fuzzed with schemathesis (node/tests/api_fuzz.rs).
# Needs the network only when the venv is missing or the pins changed. Idempotent.
set -euo pipefail

dir="${EVIO_PY_TOOLS:-${HOME:-/root}/.cache/evio/py-tools}"
pins=(kubernetes-validate==1.37.0 yamllint==1.38.0 openapi-spec-validator==0.9.0 schemathesis==4.32.5)
stamp="$dir/.pins"

if [ -x "$dir/bin/kubernetes-validate" ] && [ -x "$dir/bin/yamllint" ] \
    && [ -x "$dir/bin/openapi-spec-validator" ] && [ -x "$dir/bin/st" ] \
    && [ "$(cat "$stamp" 2>/dev/null)" = "${pins[*]}" ]; then
    exit 0
fi
command -v python3 >/dev/null || { echo "install-py-tools: python3 is required" >&2; exit 1; }
echo "installing into $dir: ${pins[*]}"
rm -rf "$dir"
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
echo "${pins[*]}" > "$stamp"
