#!/usr/bin/env bash
# Dockerfile dry run, for a machine without a Docker daemon or registry: replays the
# Dockerfile on this host and checks that the image would work.
#
#   scripts/docker-dry-run.sh          # a full release build: minutes
#
# The steps are read from the Dockerfile itself, so the two cannot drift apart:
#   build stage    WORKDIR, COPY and RUN, in order, in a fresh temporary directory that
#                  stands for the builder's file system (COPY keeps modification times,
#                  as Docker's does);
#   runtime stage  COPY --from=build into a second directory that stands for the image
#                  (it must end up holding the binary alone), then the binary runs as
#                  ENTRYPOINT + CMD, as the numeric USER, with only the image's ENV
#                  (plus PATH and a DATABASE_URL to a throwaway database); the HEALTHCHECK
#                  command must exit 0 while it serves, SIGTERM must end it with exit 0.
# Any other instruction in either stage stops the dry run: teach it here first.
#
# What stands in for the base images: this host's toolchain for rust:*-bookworm (the
# versions are printed), and this host's glibc for distroless cc-debian12; so `ldd` must
# show glibc and libgcc only, and the newest glibc symbol the binary needs is printed.
#
# Needs root (setpriv switches to the image's user), curl, psql, and PostgreSQL at
# 127.0.0.1:5432 (user postgres, trust auth), as the tests do; the service creates its
# database, the dry run drops it. The image's port (LISTEN_ADDR) must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PG_SERVER=postgres://postgres@127.0.0.1:5432
DB_NAME=cohort_ingest_docker_dry_run_$$
# The glibc of Debian 12, in both base images.
IMAGE_GLIBC=2.36

say() { printf '%s  %s\n' "$(date +%T)" "$*"; }
now_ms() { date +%s%3N; }
die() {
    printf 'docker-dry-run: %s\n' "$*" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || die "run as root: setpriv switches to the image's user"

# ---- reading the Dockerfile ------------------------------------------------------------

# One instruction a line, as Docker reads them: comment lines dropped (also inside a
# continued instruction), continuation lines joined.
instructions() {
    awk '
        /^[[:space:]]*#/ { next }
        { line = line $0 }
        /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, " ", line); next }
        line ~ /[^[:space:]]/ { print line }
        { line = "" }
    ' Dockerfile
}

BUILD_STEPS=() RUNTIME_STEPS=()
stages=0
while IFS= read -r step; do
    [[ ${step^^} == FROM* ]] && stages=$((stages + 1))
    case $stages in
        1) BUILD_STEPS+=("$step") ;;
        2) RUNTIME_STEPS+=("$step") ;;
        *) die "expected two stages (build, runtime), found another: $step" ;;
    esac
done < <(instructions)
[[ ${BUILD_STEPS[0]} =~ ^FROM[[:space:]]+([^[:space:]]+)[[:space:]]+[Aa][Ss][[:space:]]+build$ ]] ||
    die "the first stage must be 'FROM <image> AS build': ${BUILD_STEPS[0]}"
BUILD_IMAGE=${BASH_REMATCH[1]}
RUNTIME_IMAGE=$(awk '{print $2}' <<<"${RUNTIME_STEPS[0]}")

# The words of an exec-form array, ["a", "b"] (plain words only), one a line.
exec_form() {
    local array_re='^\[(.*)\]$' word_re='^[A-Za-z0-9_./:=-]+$' word
    [[ $1 =~ $array_re ]] || die "expected the exec form [\"…\"]: $1"
    while IFS= read -r word; do
        word=$(sed -E 's/^[[:space:]]*"//; s/"[[:space:]]*$//' <<<"$word")
        [[ $word =~ $word_re ]] || die "only plain words are understood here: $1"
        printf '%s\n' "$word"
    done < <(tr ',' '\n' <<<"${BASH_REMATCH[1]}")
}

# ---- the temporary file systems ----------------------------------------------------------

WORK=$(mktemp -d /tmp/cohort-ingest-docker-dry-run.XXXXXX)
chmod 755 "$WORK" # the image's user must reach the binary
BUILD_ROOT=$WORK/build
IMAGE_ROOT=$WORK/image
mkdir -p "$BUILD_ROOT" "$IMAGE_ROOT"
APP_PID=
DB_CREATED=
cleanup() {
    if [ -n "$APP_PID" ] && kill -0 "$APP_PID" 2>/dev/null; then
        kill -KILL "$APP_PID" 2>/dev/null || true
        wait "$APP_PID" 2>/dev/null || true
    fi
    if [ -n "$DB_CREATED" ]; then
        psql -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 ||
            echo "docker-dry-run: could not drop database $DB_NAME" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# A path of the Dockerfile, inside the directory that stands for a stage's root.
in_root() { # root workdir path
    if [[ $3 == /* ]]; then printf '%s%s' "$1" "$3"; else printf '%s/%s' "$2" "$3"; fi
}

# ---- build stage -----------------------------------------------------------------------

say "build stage: FROM $BUILD_IMAGE, here $(rustc --version) (cargo $(cargo --version | awk '{print $2}'))"
workdir=$BUILD_ROOT
run_number=0
last_run_log=
for step in "${BUILD_STEPS[@]:1}"; do
    read -r instruction arguments <<<"$step"
    case ${instruction^^} in
        WORKDIR)
            workdir=$(in_root "$BUILD_ROOT" "$workdir" "$arguments")
            mkdir -p "$workdir"
            ;;
        COPY)
            # COPY <context paths…> <destination>; a directory's contents go into the
            # destination, files into it when it ends in / (as Docker does).
            read -ra words <<<"$arguments"
            [[ ${words[0]} != --* ]] || die "COPY flags are not understood here: $step"
            destination=$(in_root "$BUILD_ROOT" "$workdir" "${words[-1]}")
            for source in "${words[@]:0:${#words[@]}-1}"; do
                [ -e "$REPO/$source" ] || die "COPY source missing from the context: $source"
                if [ -d "$REPO/$source" ]; then
                    mkdir -p "$destination" && cp -a "$REPO/$source/." "$destination/"
                elif [[ $destination == */ ]]; then
                    mkdir -p "$destination" && cp -a "$REPO/$source" "$destination"
                else
                    mkdir -p "$(dirname "$destination")" && cp -a "$REPO/$source" "$destination"
                fi
            done
            ;;
        RUN)
            # Run on this host, so never outside WORKDIR: no absolute paths.
            absolute_path_re='(^|[[:space:]>])/'
            [[ $arguments =~ $absolute_path_re ]] && die "a build RUN with an absolute path cannot run here: $step"
            run_number=$((run_number + 1))
            last_run_log=$WORK/run-$run_number.log
            say "RUN #$run_number: $(tr -s ' ' <<<"$arguments")"
            started=$SECONDS
            # The environment of a build container: no RUSTFLAGS or wrapper of this host;
            # the target directory is the builder's (WORKDIR/target), never the repo's.
            if ! (cd "$workdir" && env -i PATH="$PATH" HOME="$HOME" \
                ${CARGO_HOME:+CARGO_HOME="$CARGO_HOME"} ${RUSTUP_HOME:+RUSTUP_HOME="$RUSTUP_HOME"} \
                CARGO_TARGET_DIR="$workdir/target" sh -c "$arguments") >"$last_run_log" 2>&1; then
                tail -n 40 "$last_run_log" >&2
                die "RUN #$run_number failed"
            fi
            compiled=$(grep -c '^ *Compiling ' "$last_run_log" || true)
            say "RUN #$run_number: ok in $((SECONDS - started)) s, $compiled crates compiled"
            ;;
        *) die "instruction not understood in the build stage: $step" ;;
    esac
done
# The dependencies' layer is only worth having if the last build compiles this crate alone.
rebuilt=$(sed -nE 's/^ *Compiling ([^ ]+) .*/\1/p' "$last_run_log" | sort -u | paste -sd ' ')
[ "$rebuilt" = cohort-ingest ] ||
    die "the build after the sources' COPY compiled [$rebuilt], not cohort-ingest alone: the dependency layer does not cover them"
say "the build after the sources' COPY compiled cohort-ingest alone: dependencies came from their own layer"

# ---- runtime stage ---------------------------------------------------------------------

say "runtime stage: FROM $RUNTIME_IMAGE"
IMAGE_ENV=() ENTRYPOINT=() CMD=() HEALTHCHECK=()
image_user="" exposed=""
for step in "${RUNTIME_STEPS[@]:1}"; do
    read -r instruction arguments <<<"$step"
    case ${instruction^^} in
        COPY)
            read -ra words <<<"$arguments"
            [ "${#words[@]}" = 3 ] && [ "${words[0]}" = --from=build ] ||
                die "only 'COPY --from=build <file> <path>' is understood in the runtime stage: $step"
            mkdir -p "$(dirname "$IMAGE_ROOT${words[2]}")"
            cp -a "$BUILD_ROOT${words[1]}" "$IMAGE_ROOT${words[2]}"
            ;;
        USER)
            [[ $arguments =~ ^([0-9]+):([0-9]+)$ ]] || die "USER must be numeric uid:gid: $step"
            image_user=$arguments
            ;;
        ENV)
            assignment_re='^[A-Z_]+=[A-Za-z0-9_./:=-]*$'
            for assignment in $arguments; do
                [[ $assignment =~ $assignment_re ]] || die "only ENV NAME=value … with plain values is understood: $step"
                IMAGE_ENV+=("$assignment")
            done
            ;;
        EXPOSE) exposed=$arguments ;;
        HEALTHCHECK)
            healthcheck_re='(^|[[:space:]])CMD[[:space:]]+(\[.*\])$'
            [[ $arguments =~ $healthcheck_re ]] || die "HEALTHCHECK … CMD [\"…\"] expected: $step"
            exec_words=$(exec_form "${BASH_REMATCH[2]}")
            mapfile -t HEALTHCHECK <<<"$exec_words"
            ;;
        ENTRYPOINT)
            exec_words=$(exec_form "$arguments")
            mapfile -t ENTRYPOINT <<<"$exec_words"
            ;;
        CMD)
            exec_words=$(exec_form "$arguments")
            mapfile -t CMD <<<"$exec_words"
            ;;
        *) die "instruction not understood in the runtime stage: $step" ;;
    esac
done
[ -n "$image_user" ] || die "the runtime stage sets no USER: it would run as root"
uid=${image_user%:*} gid=${image_user#*:}
[ "$uid" != 0 ] || die "USER is root"
[ "${#ENTRYPOINT[@]}" -gt 0 ] && [ "${#HEALTHCHECK[@]}" -gt 0 ] || die "ENTRYPOINT and HEALTHCHECK are both needed"

image_files=$(cd "$IMAGE_ROOT" && find . -type f | sed 's|^\.||')
[ "$image_files" = "${ENTRYPOINT[0]}" ] || die "the image should hold the entrypoint's binary alone, holds: $image_files"
BIN=$IMAGE_ROOT${ENTRYPOINT[0]}
say "image: $image_files alone, $(du -h "$BIN" | cut -f1)"

say "ldd ${ENTRYPOINT[0]}:"
ldd "$BIN" | sed 's/^/    /'
foreign=$(ldd "$BIN" | awk '{print $1}' | grep -vE '^(linux-vdso\.so|/lib64/ld-linux|ld-linux|libc\.so|libm\.so|libgcc_s\.so|libdl\.so|libpthread\.so|librt\.so)' || true)
[ -z "$foreign" ] || die "libraries beyond glibc and libgcc, which distroless cc lacks: $foreign"
newest_glibc=$(objdump -T "$BIN" | grep -oE 'GLIBC_[0-9.]+' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
say "newest glibc symbol needed: $newest_glibc (the images have $IMAGE_GLIBC)"
[ "$(printf '%s\n%s\n' "$newest_glibc" "$IMAGE_GLIBC" | sort -V | tail -n 1)" = "$IMAGE_GLIBC" ] ||
    die "the binary needs glibc $newest_glibc, newer than the image's $IMAGE_GLIBC (built on a newer host than the image?)"

listen_addr=
for assignment in "${IMAGE_ENV[@]}"; do [[ $assignment == LISTEN_ADDR=* ]] && listen_addr=${assignment#*=}; done
[ "$listen_addr" = "0.0.0.0:${exposed%/tcp}" ] || die "LISTEN_ADDR ($listen_addr) should be 0.0.0.0 on the EXPOSEd port ($exposed)"
port=${listen_addr##*:}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is in use here; the dry run needs it free"; fi

# As in the container: the image's user, in /, with nothing of this shell's environment
# but distroless's PATH, the image's ENV and what compose adds (DATABASE_URL). setpriv and
# env exec, so a command started with this prefix keeps its pid.
AS_IMAGE=(setpriv --reuid="$uid" --regid="$gid" --clear-groups
    env -i -C / PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${IMAGE_ENV[@]}"
    DATABASE_URL="$PG_SERVER/$DB_NAME")

say "start: ${ENTRYPOINT[*]} ${CMD[*]} as $uid:$gid with ${IMAGE_ENV[*]} DATABASE_URL=…/$DB_NAME"
DB_CREATED=yes # the service creates it; dropped on exit in any case
started=$(now_ms)
"${AS_IMAGE[@]}" "$BIN" "${ENTRYPOINT[@]:1}" "${CMD[@]}" >"$WORK/service.log" 2>&1 &
APP_PID=$!
until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    if ! kill -0 "$APP_PID" 2>/dev/null; then
        cat "$WORK/service.log" >&2
        die "the service exited before it was ready"
    fi
    [ $(($(now_ms) - started)) -lt 60000 ] || die "/readyz not 200 within 60 s"
    sleep 0.1
done
say "/readyz 200 after $(($(now_ms) - started)) ms"

process_uid=$(awk '/^Uid:/ {print $2}' "/proc/$APP_PID/status")
[ "$process_uid" = "$uid" ] || die "the service runs as uid $process_uid, not $uid"
ss -Hltnp "sport = :$port" | grep -q "pid=$APP_PID," || die "port $port is not the service's"
bound=$(ss -Hltnp "sport = :$port" | awk '{print $4}' | paste -sd ' ')
[ "$bound" = "$listen_addr" ] || die "the service listens on $bound, not $listen_addr"
say "pid $APP_PID runs as uid $process_uid, listens on $bound"

set +e
"${AS_IMAGE[@]}" "$IMAGE_ROOT${HEALTHCHECK[0]}" "${HEALTHCHECK[@]:1}"
health=$?
set -e
say "HEALTHCHECK ${HEALTHCHECK[*]}: exit $health"
[ "$health" = 0 ] || die "the HEALTHCHECK command failed while the service serves"

started=$(now_ms)
kill -TERM "$APP_PID"
set +e
wait "$APP_PID"
status=$?
set -e
APP_PID=
say "SIGTERM: exit $status after $(($(now_ms) - started)) ms"
[ "$status" = 0 ] || {
    cat "$WORK/service.log" >&2
    die "the service did not exit 0 on SIGTERM"
}

# The health check must also be able to fail, or its exit 0 above proves nothing.
if "${AS_IMAGE[@]}" "$IMAGE_ROOT${HEALTHCHECK[0]}" "${HEALTHCHECK[@]:1}" 2>/dev/null; then
    die "the HEALTHCHECK command exits 0 with the service stopped"
fi
say "HEALTHCHECK with the service stopped: fails, as it should"

not_json=$(grep -cv '^{' "$WORK/service.log" || true)
[ "$not_json" = 0 ] || die "$not_json log lines are not JSON objects (LOG_FORMAT=json)"
say "log: $(wc -l <"$WORK/service.log") lines, all JSON objects"
say "dry run passed"
