#!/usr/bin/env bash
# PRODUCTION ONLY — build the Argus CPU image here and smoke-test it with `argus demo` inside it.
# No registry needed: the base image is made from Debian packages (mmdebstrap, then podman import);
# pip installs from PyPI (and a local CPU torch wheel when PIP_FIND_LINKS has one).
#   infra/production/build_image.sh              # build localhost/argus:0.1.0, run `argus demo` in it
#   ARGUS_IMAGE=registry.example.com/argus:0.1.0 SMOKE=0 infra/production/build_image.sh
# Needs: apt-get install mmdebstrap podman buildah (root). The smoke test runs through
# `buildah run --isolation chroot` (works where `podman run` cannot set rlimits/cgroups); the image
# itself is an ordinary OCI/Docker image (ENTRYPOINT argus, USER 10001, HEALTHCHECK on /healthz).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="${ARGUS_IMAGE:-localhost/argus:0.1.0}"
BASE="${ARGUS_BASE_IMAGE:-localhost/debian-py:bookworm}"
WORK="${ARGUS_BUILD_DIR:-/var/tmp/argus-image}"
FILE="${CONTAINERFILE:-$ROOT/infra/production/Containerfile}"
SMOKE="${SMOKE:-1}"
start=$(date +%s)
mkdir -p "$WORK"

if ! podman image exists "$BASE"; then
  echo "== base image $BASE (mmdebstrap bookworm minbase + python3)"
  nice -n 10 mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/base.tar"
  podman import "$WORK/base.tar" "$BASE"
  rm -f "$WORK/base.tar"
fi

echo "== build context: the working tree's files (tracked + untracked, not ignored)"
rm -rf "$WORK/context" && mkdir -p "$WORK/context/wheels"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
  | python3 -c 'import os, sys; sys.stdout.write("".join(p + "\0" for p in set(sys.stdin.read().split("\0")) if p and os.path.isfile(p)))' \
  | tar --null -T - -cf -) | tar -xf - -C "$WORK/context"
mkdir -p "$WORK/context/build-ca"
cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
[ -f "$cert" ] && cp "$cert" "$WORK/context/build-ca/ca.pem"   # pip behind a TLS-inspecting proxy
torch_pin=$(grep -E '^torch==' "$ROOT/requirements.lock" | cut -d' ' -f1 | cut -d= -f3)   # e.g. 2.13.0+cpu
for dir in ${PIP_FIND_LINKS:-}; do   # a local CPU torch wheel saves a 200 MB download
  cp -v "$dir"/torch-"${torch_pin}"-cp311-*.whl "$WORK/context/wheels/" 2>/dev/null || true
done
torch_index=()   # no PyTorch index when the wheel is here (it may be unreachable, as on this machine)
ls "$WORK/context/wheels"/torch-*.whl >/dev/null 2>&1 && torch_index=(--build-arg TORCH_INDEX=)

echo "== podman build $IMAGE"
nice -n 10 podman build --isolation chroot --format docker --layers -f "$FILE" --build-arg BASE="$BASE" "${torch_index[@]}" \
  -t "$IMAGE" "$WORK/context"
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
echo "== built $IMAGE: $((size / 1024 / 1024)) MiB in $(( $(date +%s) - start )) s"

if [ "$SMOKE" = 1 ]; then
  echo "== smoke test: argus demo inside the image (buildah run --isolation chroot)"
  ctr=$(buildah from "$IMAGE")
  trap 'buildah rm "$ctr" >/dev/null' EXIT
  t0=$(date +%s)
  nice -n 10 buildah run --isolation chroot "$ctr" -- argus demo --transactions "${DEMO_TRANSACTIONS:-5000}" --reports 2 \
    2>&1 | tee "$WORK/demo.log"
  # the demo dead-letters what fails and exits 0: a missing module in the image must fail the build
  if grep -E "ModuleNotFoundError|ImportError|Traceback" "$WORK/demo.log"; then
    echo "== argus demo inside $IMAGE hit an import error (above)"; exit 1
  fi
  grep -Eq "reports summarised +│ +2 │ +2 " "$WORK/demo.log" || { echo "== not every report was summarised"; exit 1; }
  echo "== argus demo passed inside $IMAGE in $(( $(date +%s) - t0 )) s"
fi
