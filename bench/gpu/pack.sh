#!/usr/bin/env bash
# Packs what the lent GPU machine lacks into .gpu/carry/ (git-ignored), to travel with a
# `device` run as `carry: [".gpu/carry"]`. Run on this (x86-64, networked) machine:
#
#     bench/gpu/pack.sh            # downloads once into .gpu/wheels, then packs
#
# The GPU machine has Python 3.12 and torch 2.11 (CUDA 13) but no ray, gymnasium or ale-py,
# cannot download anything, and one call carries at most 64 MiB (the working tree included).
# ray 2.60's wheel alone is 79 MB, so wheels cannot travel as they are: they are unpacked into
# one folder, ray/jars (Java only; RLlib never loads it) is dropped, and the folder is
# xz-packed (see ../shared/notes/gpu-device.md for the measurements).
#
# What is packed: every package in the dependency closure of ray[rllib]==2.60.0, gymnasium and
# ale-py (its ROMs are inside its wheel) and this project that the GPU image does not have
# (the image's list: /work/.library/device/KINDS.md). Versions are the ones this project's
# .venv runs and tests with, for cp312 manylinux x86-64. The project itself is packed too
# (its wheel, built from the working tree); check.sh still puts the working tree first on
# PYTHONPATH, so the code that runs there is the tree's.
#
# Exit status: 0 when packed and under the limit; 1 when the tarball plus the working tree
# would pass 64 MiB (nothing is carried then) or a download/pack step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GPU_DIR="${GPU_DIR:-$ROOT/.gpu}"
LIMIT_BYTES=$((64 * 1024 * 1024))
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

# Missing from the GPU image, with the versions the project's .venv tests. Pure-Python
# wheels ("none-any") come through the same platform-pinned download.
PACKAGES=(
    ray==2.60.0
    gymnasium==1.2.2
    farama-notifications==0.0.6
    ale-py==0.12.1
    dm-tree==0.1.10
    tensorboardx==2.6.5
    lz4==4.4.5
    ormsgpack==1.13.1
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
    pydantic==2.14.4
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    tzdata==2026.6
)

WHEELS="$GPU_DIR/wheels"
SITE="$GPU_DIR/site"
CARRY="$GPU_DIR/carry"
mkdir -p "$WHEELS" "$CARRY"
command -v unzip >/dev/null || { echo "ERROR: pack.sh needs unzip (apt-get install unzip)." >&2; exit 1; }
command -v xz >/dev/null || { echo "ERROR: pack.sh needs xz (apt-get install xz-utils)." >&2; exit 1; }

echo "== downloading cp312 manylinux x86-64 wheels into $WHEELS (cached)"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    -d "$WHEELS" "${PACKAGES[@]}"

echo "== building the project's wheel from the working tree"
rm -f "$WHEELS"/rllib_drqn-*.whl
had_build=0
[[ -e "$ROOT/build" ]] && had_build=1
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELS" "$ROOT" >/dev/null
# setuptools leaves a build folder in the tree (git-ignored); remove it only if it made it.
((had_build)) || rm -rf "$ROOT/build"

echo "== unpacking into $SITE"
rm -rf "$SITE"
mkdir -p "$SITE"
for wheel in "$WHEELS"/*.whl; do
    # unzip, not Python's zipfile: it keeps the executable bits (raylet, gcs_server).
    unzip -q -o "$wheel" -d "$SITE"
done
# Java only (33 MB unpacked); RLlib and Tune never start a Java worker.
rm -rf "$SITE/ray/jars"

echo "== packing"
MANIFEST="$CARRY/MANIFEST.txt"
{
    echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) by bench/gpu/pack.sh"
    echo "project commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "wheels:"
    (cd "$WHEELS" && ls -1 ./*.whl | sed 's|^\./|  |')
} >"$MANIFEST"
TARBALL="$CARRY/site.tar.xz"
tar cf - -C "$SITE" . | nice -n 5 xz -T2 -6 >"$TARBALL.tmp"
mv "$TARBALL.tmp" "$TARBALL"

carry_bytes=$(du -cb "$CARRY"/* | tail -1 | cut -f1)
# What `run` copies besides the carry: tracked files and untracked ones git does not ignore.
tree_bytes=$(cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 -r du -cb 2>/dev/null \
    | awk '$2 == "total" {sum += $1} END {print sum + 0}')
total=$((carry_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo
echo "site folder:   $(mib "$(du -sb "$SITE" | cut -f1)") unpacked (ray/jars dropped)"
echo "carry:         $(mib "$carry_bytes")  ($CARRY: site.tar.xz, MANIFEST.txt)"
echo "working tree:  $(mib "$tree_bytes")"
echo "total:         $(mib "$total") of the 64 MiB a call may carry"
if ((total > LIMIT_BYTES)); then
    echo "ERROR: the carry plus the working tree is $(mib "$total"), over the 64 MiB limit of one" \
        "device call. Drop a package from PACKAGES in $0 or remove large untracked files from" \
        "the tree." >&2
    exit 1
fi
echo
echo "OK. On the device: run(command='bench/gpu/check.sh', carry=['.gpu/carry'], timeout_s=540)"
