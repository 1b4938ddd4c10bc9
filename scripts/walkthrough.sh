#!/usr/bin/env bash
# Runs README.md's walkthrough: every ```bash block between <!-- walkthrough:start --> and
# <!-- walkthrough:end -->, in order, as one `bash -euo pipefail` script, against a running
# instance on a fresh database (the walkthrough creates partners whose names must be free).
#
#   API=http://127.0.0.1:8080 ADMIN_TOKEN=change-me scripts/walkthrough.sh [FILE.md…]
#
# README.md unless Markdown files with the same markers are given: their blocks run in
# one session, in the order of the files (docs/api.md continues README's walkthrough).
#
# API defaults to the service's default listen address; ADMIN_TOKEN must be the
# instance's. The run fails on any failing command (the blocks use `curl -fsS` wherever
# success is expected, so an HTTP status of 400 or above fails it too), and when what a
# block prints differs from the answers the README shows under its commands: a comment
# line starting with `{`, `[`, a digit or `…` after `# ` is a shown answer, one line of
# output (further comment lines indented by two spaces or more continue it); `…` stands
# for anything.
set -euo pipefail

files=()
for file in "${@:-$(dirname "$0")/../README.md}"; do
    files+=("$(cd "$(dirname "$file")" && pwd)/$(basename "$file")")
done
export API=${API:-http://127.0.0.1:8080}
: "${ADMIN_TOKEN:?set ADMIN_TOKEN to the admin token of the running instance}"
export ADMIN_TOKEN

# The blocks' code, each block announced on stdout by a marker line as it starts.
blocks() {
    awk '
        FNR == 1 { inside = 0; code = 0 }
        /<!-- walkthrough:start -->/ { inside = 1; next }
        /<!-- walkthrough:end -->/   { inside = 0; next }
        inside && /^```bash[[:space:]]*$/ { n++; printf "echo \"### walkthrough block %d\"\n", n; code = 1; next }
        inside && code && /^```[[:space:]]*$/ { code = 0; next }
        inside && code { print }
    ' "${files[@]}"
}

# The answers the README shows, one a line: the block's number, a tab, the answer.
shown() {
    awk '
        function flush() { if (pending != "") print n "\t" pending; pending = "" }
        FNR == 1 { inside = 0; code = 0 }
        /<!-- walkthrough:start -->/ { inside = 1; next }
        /<!-- walkthrough:end -->/   { inside = 0; next }
        inside && /^```bash[[:space:]]*$/ { n++; code = 1; next }
        inside && code && /^```[[:space:]]*$/ { flush(); code = 0; next }
        !(inside && code) { next }
        /^# ([[{0-9]|…)/ { flush(); pending = substr($0, 3); next }
        /^#   */ && pending != "" { line = $0; sub(/^#  +/, "", line); pending = pending line; next }
        { flush() }
    ' "${files[@]}"
}

script=$(blocks)
if ! grep -q '^echo "### walkthrough block' <<<"$script"; then
    echo "walkthrough.sh: no \`\`\`bash block between the walkthrough markers of ${files[*]}" >&2
    exit 1
fi

# Files the walkthrough writes go to a directory of their own.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
cd "$workdir"
bash -euo pipefail -c "$script" | tee output.txt

# `…` matches anything; every other character of a shown answer stands for itself.
as_pattern() {
    local pattern=$1
    pattern=${pattern//\\/\\\\}
    pattern=${pattern//\*/\\*}
    pattern=${pattern//\?/\\?}
    pattern=${pattern//\[/\\[}
    pattern=${pattern//\]/\\]}
    printf '%s' "${pattern//…/*}"
}

failures=0
blocks_run=$(grep -c '^### walkthrough block ' output.txt)
for ((block = 1; block <= blocks_run; block++)); do
    mapfile -t printed < <(awk -v b="### walkthrough block $block" '$0 == b { on = 1; next } /^### walkthrough block / { on = 0 } on' output.txt)
    mapfile -t expected < <(shown | awk -F '\t' -v b="$block" '$1 == b { sub(/^[^\t]*\t/, ""); print }')
    if ((${#printed[@]} != ${#expected[@]})); then
        echo "walkthrough block $block printed ${#printed[@]} lines, the file shows ${#expected[@]} answers" >&2
        failures=$((failures + 1))
        continue
    fi
    for ((i = 0; i < ${#printed[@]}; i++)); do
        pattern=$(as_pattern "${expected[i]}")
        # shellcheck disable=SC2053 # the pattern is a glob on purpose
        if [[ ${printed[i]} != $pattern ]]; then
            printf 'walkthrough block %d, answer %d:\n  shown:        %s\n  service said: %s\n' \
                "$block" $((i + 1)) "${expected[i]}" "${printed[i]}" >&2
            failures=$((failures + 1))
        fi
    done
done
if ((failures > 0)); then
    echo "walkthrough: every block ran, but $failures answer(s) differ from the ones shown" >&2
    exit 1
fi
echo "walkthrough: every block ran and printed the answers shown" >&2
