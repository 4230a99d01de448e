#!/usr/bin/env bash
# Builds a zoobot-pipeline image with buildah (no Docker daemon needed), saves it as a docker-archive and, with
# --sif, converts that into an Apptainer image; prints the image's size and its largest layers and packages.
# Re-running reuses the base image, cached layers and archives.
#
# Usage: containers/build.sh [--install-tools] [--target scoring|training|training-tensorflow] [--gpu] [--sif]
#                           [--push REGISTRY]
#   --install-tools    install the Debian packages this needs (buildah, podman, mmdebstrap ...) where one is missing
#   --target TARGET    scoring (default: onnxruntime, Ray Data, Prefect; no torch), training (torch and everything)
#                      or training-tensorflow (TensorFlow and everything, no torch)
#   --gpu              onnxruntime-gpu instead of onnxruntime, and for training-tensorflow TensorFlow's CUDA build
#                      instead of tensorflow-cpu (tags end in -gpu)
#   --sif              also the Apptainer image, made from the docker-archive
#   --push REGISTRY    after building, tag the image REGISTRY/zoobot-pipeline-TARGET:VERSION and :latest (-gpu
#                      suffixed for the GPU variant) and push both, e.g. --push ghcr.io/zoobot-pipeline;
#                      log in first with `podman login ghcr.io` (credentials stay in podman's auth file)
# Environment (all optional):
#   BUILD_DIR          build state: container storage, archives, .sif (default ~/.cache/zoobot-pipeline-containers)
#   IMAGE              tag to build (default localhost/zoobot-pipeline-TARGET:VERSION, -gpu suffixed for GPU)
#   BASE               base image; by default python:3.11-slim-bookworm if it can be pulled, else a Debian bookworm
#                      image made with mmdebstrap from DEBIAN_MIRROR (default: the Debian archive apt uses here)
#   PIP_CA             CA bundle pip trusts inside the build, passed as a build secret (default: the system bundle)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zoobot-pipeline-containers}
PIP_CA=${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
UPSTREAM_BASE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/debian-base:bookworm
APPTAINER_IMAGE=localhost/apptainer:sid
NICE=(nice -n 19 ionice -c3)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

target=scoring
onnxruntime_extra=scoring
tensorflow_extra=tensorflow
install_tools=0
sif=0
push=
while (( $# )); do
    case $1 in
        --target) target=${2:?--target needs scoring, training or training-tensorflow}; shift ;;
        --gpu) onnxruntime_extra=gpu tensorflow_extra=tensorflow-cuda ;;
        --install-tools) install_tools=1 ;;
        --sif) sif=1 ;;
        --push) push=${2:?--push needs a registry, e.g. ghcr.io/zoobot-pipeline}; shift ;;
        -h|--help) sed -n '2,25s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
[[ $target == scoring || $target == training || $target == training-tensorflow ]] \
    || die "--target must be 'scoring', 'training' or 'training-tensorflow', not '$target'"
repository=zoobot-pipeline-$target
suffix=
if [[ $onnxruntime_extra == gpu ]]; then suffix=-gpu; fi
IMAGE=${IMAGE:-localhost/$repository:$VERSION$suffix}
[[ ${push##*/} != *:* ]] || die "--push wants a registry without a tag (e.g. ghcr.io/zoobot-pipeline), not '$push'"
# The Debian packages this needs: installed all together (apt-get skips those present) when a command is missing.
PACKAGES=(buildah podman skopeo umoci mmdebstrap runc uidmap fuse-overlayfs slirp4netns containernetworking-plugins)
missing=()
for tool in buildah podman mmdebstrap runc newuidmap fuse-overlayfs slirp4netns; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )) && (( install_tools )); then
    log "${missing[*]} not found: installing ${PACKAGES[*]}"
    (( EUID == 0 )) || die "--install-tools needs root (apt-get install ${PACKAGES[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${PACKAGES[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}" >/dev/null; } \
        || die "apt-get could not install ${PACKAGES[*]}"
elif (( ${#missing[@]} )); then
    die "${missing[*]} not found: apt-get install ${PACKAGES[*]} (or run this with --install-tools as root)"
fi
[[ -r $PIP_CA ]] || die "PIP_CA=$PIP_CA is not readable"

# Storage and engine settings for these builds only, selected by environment variables (nothing system-wide).
# runc: crun fails on hybrid cgroup hosts; the ulimits are the highest such hosts allow.
mkdir -p "$BUILD_DIR"
export CONTAINERS_STORAGE_CONF=$BUILD_DIR/storage.conf CONTAINERS_CONF=$BUILD_DIR/containers.conf
cat > "$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$BUILD_DIR/storage"
runroot = "$BUILD_DIR/run"
EOF
cat > "$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

# The Debian archive to bootstrap from: DEBIAN_MIRROR, else the one apt is configured with (it serves every suite).
debian_mirror() {
    local mirror=${DEBIAN_MIRROR:-}
    if [[ -z $mirror ]] && command -v apt-get >/dev/null; then
        mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Origin: Debian' 'Label: Debian' 'Identifier: Packages' \
            | head -n 1)
    fi
    [[ -n $mirror ]] || die "no Debian archive in apt's configuration (run apt-get update?): set DEBIAN_MIRROR"
    echo "$mirror"
}

# A root filesystem from mmdebstrap, imported as an image (skipped when the image exists).
debootstrap_image() {
    local image=$1 suite=$2 packages=$3 tarball=$BUILD_DIR/$4.tar mirror
    podman image exists "$image" && return
    if [[ ! -f $tarball ]]; then
        mirror=$(debian_mirror)
        log "building $image with mmdebstrap from $mirror (about a minute)"
        "${NICE[@]}" mmdebstrap --variant=minbase --format=tar --include="$packages" \
            --aptopt='Acquire::Check-Valid-Until "false"' "$suite" "$tarball.partial" "$mirror"
        mv "$tarball.partial" "$tarball"
    fi
    podman import "$tarball" "$image" >/dev/null
}

if [[ -z ${BASE:-} ]]; then
    if podman image exists "$UPSTREAM_BASE" || timeout 60 podman pull --quiet "$UPSTREAM_BASE" >/dev/null 2>&1; then
        BASE=$UPSTREAM_BASE
    else
        log "cannot pull $UPSTREAM_BASE; using a Debian bookworm base instead"
        command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap (or set BASE)"
        debootstrap_image "$LOCAL_BASE" bookworm python3,python3-venv,python3-pip,ca-certificates debian-base-bookworm
        BASE=$LOCAL_BASE
    fi
fi

if [[ $target == training ]]; then
    log "building $IMAGE from $BASE (a first build downloads torch and its CUDA libraries: several GB)"
elif [[ $target == training-tensorflow && $tensorflow_extra == tensorflow-cuda ]]; then
    log "building $IMAGE from $BASE (a first build downloads TensorFlow and the CUDA libraries: several GB)"
else
    log "building $IMAGE from $BASE"
fi
# Which TensorFlow (tensorflow-cpu, or the CUDA build with --gpu): an argument of the training-tensorflow stages only.
tensorflow_args=()
if [[ $target == training-tensorflow ]]; then tensorflow_args=(--build-arg TENSORFLOW_EXTRA="$tensorflow_extra"); fi
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
start=$SECONDS
"${NICE[@]}" buildah bud --pull=never --layers --format docker --target "$target" \
    --file "$REPO/containers/Dockerfile" --ignorefile "$REPO/containers/Dockerfile.dockerignore" \
    --build-arg BASE="$BASE" --build-arg ONNXRUNTIME_EXTRA="$onnxruntime_extra" \
    "${tensorflow_args[@]}" \
    --secret id=pip_ca,src="$PIP_CA" \
    --tag "$IMAGE" "$REPO"
log "built $IMAGE in $((SECONDS - start)) s"
podman run --rm --network=none --no-healthcheck "$IMAGE" --version
id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
# The image this tag named before: its venv layer alone is over 1 GB (the builder stages stay, as the layer cache).
if [[ -n $previous && $previous != "$id" ]]; then
    podman rmi "$previous" >/dev/null 2>&1 \
        || log "kept the previous $IMAGE ($previous): another tag or container uses it"
fi

# Sizes, uncompressed: the image, its layers over 1 MB (newest first) and the largest packages in its venv.
human() { numfmt --to=iec-i --suffix=B --round=nearest --format=%.2f "$1"; }
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $(human "$size") uncompressed ($size bytes); layers over 1 MB:"
podman history --format '{{.ImageHistoryLayer.Size}}	{{.CreatedBy}}' "$IMAGE" \
    | while IFS=$'\t' read -r bytes created_by; do
        if (( bytes >= 1000000 )); then
            printf '    %9s  %.100s\n' "$(human "$bytes")" "${created_by#/bin/sh -c #(nop) }"
        fi
    done >&2
log "largest packages in /opt/venv (MB):"
podman run --rm --network=none --no-healthcheck --entrypoint sh "$IMAGE" -c \
    'cd /opt/venv/lib/python3*/site-packages && du -sm -- * | sort -rn | head -n 12' | sed 's/^/    /' >&2

# The archive is rewritten only when the image changed (its ID is kept beside it).
name=$(basename "${IMAGE//:/-}")
archive=$BUILD_DIR/$name.tar
if [[ $(cat "$archive.id" 2>/dev/null) != "$id" ]]; then
    log "saving $archive"
    rm -f "$archive" "$archive.id"
    "${NICE[@]}" podman save --format docker-archive --output "$archive" "$IMAGE"
    echo "$id" > "$archive.id"
fi
log "docker-archive: $archive ($(du -h "$archive" | cut -f1)); load it with: docker load -i $archive"

if (( sif )); then
    sif_file=$BUILD_DIR/$name.sif
    if [[ $(cat "$sif_file.id" 2>/dev/null) == "$id" ]]; then
        log "$sif_file is up to date"
    elif command -v apptainer >/dev/null; then
        rm -f "$sif_file.id"
        "${NICE[@]}" apptainer build --force --build-arg archive="$archive" "$sif_file" \
            "$REPO/containers/zoobot-pipeline.def"
        echo "$id" > "$sif_file.id"
    else
        # No apptainer on this host (Debian 12 has none): run Debian sid's in a container. Where the host withholds
        # a capability from root, the build's %test (which asks for all of them) fails, so run it as `apptainer test`
        # with root's default capabilities off.
        log "apptainer not found; running it from a Debian sid container"
        debootstrap_image "$APPTAINER_IMAGE" sid apptainer,squashfs-tools,ca-certificates apptainer-sid
        rm -f "$sif_file.id"
        "${NICE[@]}" podman run --rm --privileged --network=none \
            -v "$BUILD_DIR:/build" -v "$REPO/containers/zoobot-pipeline.def:/zoobot-pipeline.def:ro" \
            "$APPTAINER_IMAGE" sh -c 'set -e
                sed -i "s/^root default capabilities = .*/root default capabilities = no/" /etc/apptainer/apptainer.conf
                apptainer build --force --notest --build-arg "archive=$1" "$2" /zoobot-pipeline.def
                apptainer test "$2"' sh "/build/$name.tar" "/build/$name.sif"
        echo "$id" > "$sif_file.id"
    fi
    log "Apptainer image: $sif_file ($(du -h "$sif_file" | cut -f1))"
fi

if [[ -n $push ]]; then
    for tag in "$VERSION$suffix" "latest$suffix"; do
        podman tag "$IMAGE" "$push/$repository:$tag"
        log "pushing $push/$repository:$tag"
        "${NICE[@]}" podman push "$push/$repository:$tag"
    done
fi

