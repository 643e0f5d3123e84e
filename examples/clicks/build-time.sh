#!/usr/bin/env bash
# Edit -> rebuilt binary: how long a job author waits after changing one line of a view.
#
#   examples/clicks/build-time.sh [clicks|nexmark|nexmark-fn] [PROFILE]   (defaults: clicks job)
#
# Builds once to warm the cache, then makes a one-line change to a view's logic (clicks: an
# activity bucket bound in `activity`; nexmark: the category q3 filters on, in a closure;
# nexmark-fn: the states q3 looks at, read by a named function), rebuilds and
# prints the seconds, then puts the line back and rebuilds again (a second edit, timed too).
# The file is restored from a copy on exit, whatever happens. Run from anywhere in the
# workspace; nothing else may be building into the same target/ at the time. Wall-clock
# seconds: on a shared machine, run it twice and look at the lower figure (and at `user`).
set -euo pipefail

job=${1:-clicks}
profile=${2:-job}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

case $job in
clicks)
    pkg=clicks
    file=examples/clicks/src/lib.rs
    from='5..=19 => "regular",'
    to='5..=18 => "regular",'
    ;;
nexmark)
    pkg=lambdaflow-nexmark
    file=jobs/nexmark/src/queries/q3.rs
    from='a.category == Q3_CATEGORY)'
    to='a.category == Q3_CATEGORY + 1)'
    ;;
nexmark-fn)
    # The same query, but the edit is in a named `#[inline(never)]` function (`is_local`,
    # through the constant only it reads) instead of a closure passed to an operator.
    pkg=lambdaflow-nexmark
    file=jobs/nexmark/src/queries/q3.rs
    from='["OR", "ID", "CA"]'
    to='["OR", "ID", "WA"]'
    ;;
*)
    echo "usage: $0 [clicks|nexmark|nexmark-fn] [PROFILE]" >&2
    exit 2
    ;;
esac

grep -qF -- "$from" "$file" || {
    echo "error: $file no longer contains '$from'; update the edit in $0" >&2
    exit 1
}

backup=$(mktemp)
cp "$file" "$backup"
# Restores the file only if it differs: rewriting it would make the next build recompile.
trap 'cmp -s "$backup" "$file" || cp "$backup" "$file"; rm -f "$backup"' EXIT

# Both job crates, always: building one alone resolves a dependency's features differently
# (the nexmark crate turns on rand's `small_rng`, which the engine's Kafka client also
# uses), so alternating between them would rebuild the engine each time.
build() {
    cargo build --quiet --profile "$profile" -p clicks -p lambdaflow-nexmark
}

# Replaces the first `$1` in the file by `$2` (plain strings, bash only).
swap() {
    local text
    text=$(<"$file")
    printf '%s\n' "${text/"$1"/"$2"}" >"$file"
}

timed() {
    local TIMEFORMAT="$pkg: edit -> $profile binary in %R s wall (%U s user, %S s system CPU)"
    time build
}

echo "warming up ($pkg, profile $profile) ..."
build
swap "$from" "$to"
timed
swap "$to" "$from"
timed
