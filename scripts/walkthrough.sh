#!/usr/bin/env bash
# Runs README.md's walkthrough: every ```bash block between <!-- walkthrough:start --> and
# <!-- walkthrough:end -->, in order, as one `bash -euo pipefail` script, against a running
# instance on a fresh database (the walkthrough creates partners whose names must be free).
#
#   API=http://127.0.0.1:8080 ADMIN_TOKEN=change-me scripts/walkthrough.sh
#
# API defaults to the service's default listen address; ADMIN_TOKEN must be the
# instance's. Any failing command fails the run: the blocks use `curl -fsS` wherever
# success is expected, so an HTTP status of 400 or above fails it too. The outputs the
# README shows are not compared; the script prints what really comes back.
set -euo pipefail

readme=$(cd "$(dirname "$0")/.." && pwd)/README.md
export API=${API:-http://127.0.0.1:8080}
: "${ADMIN_TOKEN:?set ADMIN_TOKEN to the admin token of the running instance}"
export ADMIN_TOKEN

# The blocks, each announced on stderr as it starts. (A function, not awk inside $(…):
# bash misreads the fences' backticks there.)
blocks() {
    awk '
        /<!-- walkthrough:start -->/ { inside = 1; next }
        /<!-- walkthrough:end -->/   { inside = 0; next }
        inside && /^```bash[[:space:]]*$/ { n++; printf "echo \"### walkthrough block %d\" >&2\n", n; code = 1; next }
        inside && code && /^```[[:space:]]*$/ { code = 0; next }
        inside && code { print }
    ' "$readme"
}
script=$(blocks)

if ! grep -q '^echo "### walkthrough block' <<<"$script"; then
    echo "walkthrough.sh: no \`\`\`bash block between the walkthrough markers of $readme" >&2
    exit 1
fi

# Files the walkthrough writes (an export) go to a directory of their own.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
cd "$workdir"
bash -euo pipefail -c "$script"
echo "walkthrough: every block ran" >&2
