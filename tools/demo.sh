#!/usr/bin/env bash
# Builds kiln's demo (g++ Release, -O3 -march=native) and runs it on Fashion-MNIST from Debian's
# dataset-fashion-mnist package (unpacked once into build/data/fashion-mnist), writing its output
# under demo-out/. Extra arguments go to the demo (try: bash tools/demo.sh --epochs 1, or --help).
# Missing Debian packages are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ cmake ninja-build doctest-dev dataset-fashion-mnist)

source "tools/install-missing.sh"

install_missing "${PACKAGES[@]}"

# The demo reads the uncompressed IDX files; the package ships them gzipped. Unpack them once
# into build/data/fashion-mnist (KILN_FASHION_MNIST=DIR points at unpacked files instead).
data_dir="${KILN_FASHION_MNIST:-}"
if [ -z "$data_dir" ]; then
  train_images="$(dpkg -L dataset-fashion-mnist | grep -E 'train-images[^/]*$' | head -n 1 || true)"
  if [ -z "$train_images" ]; then
    echo "error: dataset-fashion-mnist holds no train-images file (dpkg -L dataset-fashion-mnist)" >&2
    exit 1
  fi
  package_dir="$(dirname "$train_images")"
  data_dir="build/data/fashion-mnist"
  mkdir -p "$data_dir"
  for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$package_dir/$name.gz" ] && [ ! -s "$data_dir/$name" ]; then
      echo "==> unpacking $package_dir/$name.gz into $data_dir/"
      gzip -dc "$package_dir/$name.gz" >"$data_dir/$name.tmp" && mv "$data_dir/$name.tmp" "$data_dir/$name"
    elif [ -f "$package_dir/$name" ] && [ ! -s "$data_dir/$name" ]; then
      cp "$package_dir/$name" "$data_dir/$name"
    fi
  done
fi

if [ ! -f examples/demo.cpp ] && [ ! -d examples/demo ]; then
  echo "error: examples/demo.cpp is missing" >&2
  exit 1
fi

echo "==> configuring (build/release)"
cmake --preset release >/dev/null
echo "==> building the demo"
cmake --build build/release --target demo -j"${KILN_BUILD_JOBS:-2}"

echo "==> build/release/examples/demo --data $data_dir --out demo-out $*"
exec build/release/examples/demo --data "$data_dir" --out demo-out "$@"
