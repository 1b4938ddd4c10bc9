#!/usr/bin/env bash
# Regenerates `.sqlx/`, the offline data the sqlx query macros (src/store/) check the
# statements against, from a throwaway database holding the migrations' schema.
# Run it after changing a statement or a migration, and commit `.sqlx/` with the change.
#
#   scripts/sqlx-prepare.sh           regenerate `.sqlx/` (stale files go with it)
#   scripts/sqlx-prepare.sh --check   fail if `.sqlx/` differs from what would be generated
#
# Needs PostgreSQL at 127.0.0.1:5432, user postgres, trust auth (PGHOST, PGPORT and
# PGUSER override them), as the tests do.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
user=${PGUSER:-postgres}
database=cohort_ingest_sqlx_prepare_$$
url=postgres://$user@$host:$port/$database
generated=$(mktemp -d)
psql_admin() { psql -q -X -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U "$user" -d postgres "$@"; }
cleanup() {
    psql_admin -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$generated"
}
trap cleanup EXIT

# The macros need only the schema: the migration files, applied with psql in order, each in
# one transaction, as sqlx applies them. (The service's own `migrate` would need the service
# built, which fails from a stale `.sqlx/`, the very case this script is for.)
psql_admin -c "CREATE DATABASE $database" >/dev/null
for migration in migrations/*.sql; do
    psql -q -X -v ON_ERROR_STOP=1 -1 -h "$host" -p "$port" -U "$user" -d "$database" -f "$migration" >/dev/null
done

# The macros describe each statement on the live database and, with SQLX_OFFLINE_DIR set,
# write one file per statement there. Cargo does not see the environment change, so the
# crate is touched to make it expand the macros again, and touched after, so that the next
# build expands them from `.sqlx/` instead of keeping what the live database gave.
touch src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR=$generated DATABASE_URL=$url cargo check --quiet --package cohort-ingest --lib
touch src/lib.rs

if $check; then
    if ! diff -r .sqlx "$generated" >/dev/null 2>&1; then
        diff -r .sqlx "$generated" >&2 || true
        echo "sqlx-prepare: .sqlx/ is not what the statements and migrations give; run scripts/sqlx-prepare.sh and commit .sqlx/" >&2
        exit 1
    fi
    echo "sqlx-prepare: .sqlx/ is up to date ($(find "$generated" -name 'query-*.json' | wc -l) statements)"
else
    rm -rf .sqlx
    mkdir .sqlx
    cp "$generated"/query-*.json .sqlx/
    echo "sqlx-prepare: wrote $(find .sqlx -name 'query-*.json' | wc -l) statements to .sqlx/"
fi
