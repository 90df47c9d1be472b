#!/usr/bin/env bash
# Checks the protobuf API with buf: `buf lint` with buf.yaml's rules, then `buf breaking` against
# the API as last released, which is the committed image .ci/api-baseline.json and, when the clone
# has one, the newest `v*` tag. BUF_AGAINST adds another baseline, e.g.
# BUF_AGAINST='.git#branch=main,subdir=proto' to compare with main before a merge.
#
# At a release, after tagging: `bash .ci/buf.sh refresh-baseline` rewrites the image from proto/,
# and the commit that carries it makes that API the one every later change must stay compatible
# with.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

baseline=.ci/api-baseline.json

# The buf CLI comes from the npm package, which ships the native binary for each platform;
# pinned, and installed once into a cache directory beside the other CI tools.
version=1.75.0
tools="${TMPDIR:-/tmp}/label-studio-identity-buf-$version"
buf="$tools/node_modules/.bin/buf"
if [[ ! -x $buf ]] || [[ $("$buf" --version 2>/dev/null) != "$version" ]]; then
    staging=$(mktemp -d "$tools.XXXXXX")
    npm install --prefix "$staging" --no-save --no-package-lock --no-audit --no-fund \
        --ignore-scripts --loglevel=error "@bufbuild/buf@$version" >&2
    rm -rf "$tools"
    # Another run may have finished the same install meanwhile; either copy will do.
    mv -T "$staging" "$tools" 2>/dev/null || rm -rf "$staging"
fi

if [[ ${1:-} == refresh-baseline ]]; then
    "$buf" build --exclude-source-info -o -#format=json \
        | python3 -c 'import json, sys; json.dump(json.load(sys.stdin), sys.stdout, indent=1); print()' \
        >"$baseline"
    echo "buf: wrote $baseline from proto/"
    exit 0
fi

echo "buf $version: lint"
"$buf" lint

against=("$baseline")
tag=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)
[[ -n $tag ]] && against+=(".git#tag=$tag,subdir=proto")
[[ -n ${BUF_AGAINST:-} ]] && against+=("$BUF_AGAINST")
for input in "${against[@]}"; do
    echo "buf $version: breaking against $input"
    "$buf" breaking --against "$input"
done
echo "buf: lint and breaking passed"
