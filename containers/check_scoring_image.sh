#!/usr/bin/env bash
# Runs the scoring image built by containers/build.sh against the host, end to end, and exits non-zero with the
# reason on any failure. On the host, with the project's .venv: simulate a small release, train and export a tiny
# model package, score. In fresh containers of the image, as its non-root user, with --network=none and a read-only
# root filesystem (a tmpfs on /tmp), the release and package bind-mounted read-only and only the output writable:
#   score       its catalogue must equal the host's (same ids, values within 1e-6)
#   score again resumes: nothing rescored, the part files untouched
#   score       with a package of which one byte was changed: refused, exit 2, one `error:` line
#   pretrain    refused, exit 2, one line naming the training image (no torch here)
#   score       into /tmp: numba compiles nothing (the kernels compiled into the image are loaded)
#   catalogue   summary, and export --format fits (read back: every row)
#   flow        python -m flows score_release under a temporary local Prefect API: Completed, the host's catalogue
#   score --ray on a local Ray in the container (Ray Data, one actor): again the host's catalogue
#   rank, queue manifest on the container's catalogue: the host's ranking of the host's catalogue
# and prints the image size and wall times (the first command in a fresh container; first and second score).
#
# Usage: containers/check_scoring_image.sh            (after containers/build.sh --target scoring)
# Environment (all optional):
#   BUILD_DIR  build.sh's build state, whose container storage holds the image (default as build.sh's)
#   IMAGE      image to check (default localhost/zoobot-pipeline-scoring:VERSION)
#   WORK_DIR   scratch directory, removed afterwards unless KEEP=1 (default: a new one under /tmp)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zoobot-pipeline-containers}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
IMAGE=${IMAGE:-localhost/zoobot-pipeline-scoring:$VERSION}
HOST=$REPO/.venv/bin/zoobot-pipeline
PYTHON=$REPO/.venv/bin/python
UID_IN_IMAGE=10001
TOP=20

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'check_scoring_image.sh: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { printf '%.1f' "$(echo "$(now) - $1" | bc)"; }

command -v podman >/dev/null || die "podman not found: run containers/build.sh --install-tools --target scoring"
command -v bc >/dev/null || die "bc not found: apt-get install bc"
[[ -x $HOST ]] || die "$HOST not found: run 'make install' first (the host side needs the project's .venv)"
export CONTAINERS_STORAGE_CONF=$BUILD_DIR/storage.conf CONTAINERS_CONF=$BUILD_DIR/containers.conf
[[ -f $CONTAINERS_STORAGE_CONF && -f $CONTAINERS_CONF ]] \
    || die "no container storage in BUILD_DIR=$BUILD_DIR: run containers/build.sh --target scoring first"
podman image exists "$IMAGE" || die "no image $IMAGE in $BUILD_DIR: run containers/build.sh --target scoring first"

started=$(now)
if [[ -n ${WORK_DIR:-} ]]; then
    mkdir -p "$WORK_DIR"
else
    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/check-scoring-image.XXXXXX")
fi
W=$WORK_DIR
# Files the container wrote belong to its user (a subordinate UID under rootless podman): remove them as such.
cleanup() {
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $W"; return; fi
    if (( EUID == 0 )); then rm -rf "$W"; else podman unshare rm -rf "$W"; fi
}
trap cleanup EXIT
export RAY_AUTH_MODE=disabled

log "host: a release of 100 sources on 2 tiles, a tiny model (test_resnet, 32 px, 1 epoch), its package, a catalogue"
t=$(now)
"$HOST" simulate --out "$W/release" --galaxies 100 --tiles 2 --tile-size 256 --labelled-fraction 1.0 --workers 1 \
    >/dev/null
"$HOST" pretrain --release "$W/release" --out "$W/checkpoint" --architecture test_resnet --input-size 32 --epochs 1 \
    --batch-size 32 --quiet >/dev/null
"$HOST" export --from "$W/checkpoint" --out "$W/package" --mc-samples 3 >/dev/null
"$HOST" score --release "$W/release" --model "$W/package" --out "$W/host/catalogue" --quiet
"$HOST" rank --catalogue "$W/host/catalogue" --top $TOP --out "$W/host/queue" >/dev/null
log "host side done in $(since "$t") s"

# A copy of the package with one byte of its ONNX graph changed.
cp -r "$W/package" "$W/tampered"
"$PYTHON" -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0xFF
open(p, "wb").write(b)' "$W/tampered/model.onnx"

# The container's only writable directory, owned by the image's user.
mkdir -p "$W/out"
if (( EUID == 0 )); then
    chown "$UID_IN_IMAGE:$UID_IN_IMAGE" "$W/out"
else
    podman unshare chown "$UID_IN_IMAGE:$UID_IN_IMAGE" "$W/out"
fi

# RAY_AUTH_MODE=disabled for score --ray: a local Ray on a container without network, as the tests run it.
in_container() {
    podman run --rm --network=none --read-only --tmpfs /tmp --no-healthcheck --user "$UID_IN_IMAGE:$UID_IN_IMAGE" \
        -e RAY_AUTH_MODE=disabled -v "$W/release:/data/release:ro" -v "$W/package:/data/package:ro" \
        -v "$W/tampered:/data/tampered:ro" -v "$W/out:/data/out" "$IMAGE" "$@"
}
score_in_container() { in_container score --release /data/release --model "/data/$1" --out "/data/out/$2" --quiet; }

human() { numfmt --to=iec-i --suffix=B --round=nearest --format=%.2f "$1"; }
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $(human "$size") uncompressed ($size bytes)"

t=$(now)
in_container score --help >/dev/null || die "score --help failed in the container"
log "first command in a fresh container (score --help): $(since "$t") s"

t=$(now)
first=$(score_in_container package catalogue) || die "score failed in the container (exit $?)"
first_s=$(since "$t")
echo "$first"
log "first score in a fresh container: $first_s s"

log "container catalogue vs host catalogue"
"$PYTHON" "$REPO/containers/compare_catalogues.py" "$W/host/catalogue" "$W/out/catalogue" --atol 1e-6 \
    || die "the container's catalogue differs from the host's"

parts() { (cd "$W/out/catalogue/tiles" && sha256sum -- *.parquet); }
before=$(parts)
t=$(now)
second=$(score_in_container package catalogue) || die "the second score failed in the container (exit $?)"
second_s=$(since "$t")
echo "$second"
log "second score (resume) in a fresh container: $second_s s"
n_tiles=$(find "$W/release/tiles" -name '*.fits*' | wc -l)
[[ $(tr -s ' \n' ' ' <<<"$second") == *"tiles: 0 scored, $n_tiles already done, 0 failed"* ]] \
    || die "the second score did not resume (expected 'tiles: 0 scored, $n_tiles already done, 0 failed')"
[[ $(parts) == "$before" ]] || die "the second score rewrote part files"

log "tampered package"
set +e
refused=$(score_in_container tampered tampered-catalogue 2>&1)
rc=$?
set -e
echo "$refused"
(( rc == 2 )) || die "a tampered package gave exit $rc, not 2"
[[ $(grep -c . <<<"$refused") == 1 && $refused == "error: "*"does not match model.json"* ]] \
    || die "a tampered package was not refused with one 'error: ... does not match model.json' line"
[[ ! -e $W/out/tampered-catalogue/tiles ]] || die "a tampered package still wrote a catalogue"

log "pretrain (no torch in this image)"
set +e
refused=$(in_container pretrain --release /data/release --out /data/out/checkpoint 2>&1)
rc=$?
set -e
echo "$refused"
(( rc == 2 )) && [[ $(grep -c . <<<"$refused") == 1 && $refused == "error: "*"use the training image"* ]] \
    || die "pretrain in the scoring image did not stop with exit 2 and one line naming the training image (exit $rc)"

# numba writes a kernel into its cache (NUMBA_CACHE_DIR, under /tmp) only when it had to compile it.
compiled=$(podman run --rm --network=none --read-only --tmpfs /tmp --no-healthcheck \
    --user "$UID_IN_IMAGE:$UID_IN_IMAGE" -v "$W/release:/data/release:ro" -v "$W/package:/data/package:ro" \
    --entrypoint sh "$IMAGE" -c \
    'zoobot-pipeline score --release /data/release --model /data/package --out /tmp/catalogue --quiet >/dev/null &&
     find /tmp -name "*.nbi" | wc -l') || die "score into /tmp failed in the container"
(( compiled == 0 )) \
    || die "a fresh container compiled $compiled numba kernels: the image's compiled kernels were not used"
log "numba: nothing compiled in a fresh container (the image's kernels were loaded)"

log "score on Ray Data (a local Ray in the container, one inference actor)"
t=$(now)
in_container score --release /data/release --model /data/package --out /data/out/ray-catalogue --quiet --ray \
    --workers 1 2>&1 | grep -E 'sources|scored' || die "score --ray failed in the container"
log "score --ray in a fresh container: $(since "$t") s"
"$PYTHON" "$REPO/containers/compare_catalogues.py" "$W/host/catalogue" "$W/out/ray-catalogue" --atol 1e-6 \
    || die "the container's Ray Data catalogue differs from the host's"

log "rank and queue manifest in the container"
in_container rank --catalogue /data/out/catalogue --top $TOP --out /data/out/queue >/dev/null \
    || die "rank failed in the container"
in_container queue manifest --queue /data/out/queue --release /data/release --out /data/out/manifest --size 64 \
    >/dev/null || die "queue manifest failed in the container"
"$PYTHON" - "$W/host/queue/queue.parquet" "$W/out/queue/queue.parquet" "$W/out/manifest" $TOP <<'EOF' \
    || die "the container's queue or manifest is not the host's"
import csv
import sys
from pathlib import Path

import pyarrow.parquet as pq

host, container, manifest, top = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
want, got = (pq.read_table(path, columns=["id_str"])["id_str"].to_pylist() for path in (host, container))
assert len(got) == top and got == want, f"queued {got} but the host queued {want}"
rows = list(csv.DictReader((manifest / "manifest.csv").open()))
assert len(rows) == top, f"manifest.csv has {len(rows)} rows, not {top}"
images = [path for path in manifest.rglob("*.png")]
assert len(images) == top, f"{len(images)} images in {manifest}, not {top}"
print(f"queue: the host's {top} galaxies in the host's order; manifest: {len(rows)} rows, {len(images)} images")
EOF

log "catalogue summary and FITS export in the container"
in_container catalogue summary /data/out/catalogue >/dev/null || die "catalogue summary failed in the container"
in_container catalogue export /data/out/catalogue --format fits --out /data/out/catalogue.fits >/dev/null \
    || die "catalogue export --format fits failed in the container"
"$PYTHON" - "$W/out/catalogue.fits" "$W/host/catalogue" <<'EOF' || die "the container's FITS export is not the catalogue"
import sys

import pyarrow.dataset as ds
from astropy.io import fits

table = fits.getdata(sys.argv[1], "CATALOGUE")
rows = ds.dataset(f"{sys.argv[2]}/tiles", format="parquet").count_rows()
assert len(table) == rows, f"{len(table)} rows in the FITS table, {rows} in the catalogue"
print(f"FITS export: {len(table)} rows, {len(table.columns)} columns")
EOF

# The scoring flow under Prefect, as a deployment's container runs it (python -m flows, a temporary local Prefect API
# in the container: no network, state under /tmp).
log "score-release flow (Prefect) in the container"
t=$(now)
podman run --rm --network=none --read-only --tmpfs /tmp --no-healthcheck --user "$UID_IN_IMAGE:$UID_IN_IMAGE" \
    -e PREFECT_HOME=/tmp/prefect -e PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \
    -v "$W/release:/data/release:ro" -v "$W/package:/data/package:ro" -v "$W/out:/data/out" \
    --entrypoint python "$IMAGE" -m flows score_release \
    --params '{"release_dir": "/data/release", "package_dir": "/data/package", "out_dir": "/data/out/flow-catalogue"}' \
    >"$W/flow.log" 2>&1 || { tail -n 30 "$W/flow.log"; die "the score-release flow failed in the container"; }
grep -E "Finished in state Completed" "$W/flow.log" | tail -n 1 \
    || { tail -n 30 "$W/flow.log"; die "the score-release flow did not finish in state Completed"; }
log "score-release flow in a fresh container: $(since "$t") s"
"$PYTHON" "$REPO/containers/compare_catalogues.py" "$W/host/catalogue" "$W/out/flow-catalogue" --atol 1e-6 \
    || die "the flow's catalogue differs from the host's"

log "passed in $(since "$started") s: image $(human "$size"); score in a fresh" \
    "container $first_s s first, $second_s s resumed"
