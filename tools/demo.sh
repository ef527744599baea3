#!/usr/bin/env bash
# Builds kiln's examples (g++ Release, -O3 -march=native) and runs the demo on Fashion-MNIST from
# Debian's dataset-fashion-mnist package (read straight from its .gz files by kiln's own gzip and
# IDX readers): the W2 MLP classifier trained with autograd and Adam, its test accuracy per epoch,
# a CSV log, the configuration, a checkpoint and the weights, all under demo-out/.
# Extra arguments go to the MLP (try: bash tools/demo.sh --epochs 1, or --help).
# Missing Debian packages are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ cmake ninja-build doctest-dev dataset-fashion-mnist)

source "tools/install-missing.sh"

install_missing "${PACKAGES[@]}"

data_dir="${KILN_FASHION_MNIST:-}"
if [ -z "$data_dir" ]; then
  train_images="$(dpkg -L dataset-fashion-mnist | grep -E 'train-images[^/]*$' | head -n 1 || true)"
  if [ -z "$train_images" ]; then
    echo "error: dataset-fashion-mnist holds no train-images file (dpkg -L dataset-fashion-mnist)" >&2
    exit 1
  fi
  data_dir="$(dirname "$train_images")"
fi

echo "==> configuring (build/release)"
cmake --preset release "-DCMAKE_CXX_FLAGS_RELEASE=-O3 -DNDEBUG" >/dev/null
echo "==> building the examples"
cmake --build build/release --target mlp -j"${KILN_BUILD_JOBS:-2}"

mkdir -p demo-out
echo "==> build/release/examples/mlp --data $data_dir --epochs 2 --out demo-out/mlp $*"
build/release/examples/mlp --data "$data_dir" --epochs 2 --out demo-out/mlp "$@"
echo "==> demo-out/: mlp/log.csv (loss and test accuracy per epoch), mlp/config.txt, mlp/checkpoint.safetensors,"
echo "    mlp/model.safetensors (PyTorch names: 0.weight, 0.bias, 2.weight, ...)"
