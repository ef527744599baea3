#!/usr/bin/env bash
# Builds kiln's examples (g++ Release, -O3 -march=native) and trains every model family briefly on
# Fashion-MNIST from Debian's dataset-fashion-mnist package (read straight from its .gz files by
# kiln's own gzip and IDX readers), writing everything under demo-out/:
#   mlp/        the W2 classifier: test accuracy per epoch
#   vae/        the W3 VAE: samples, reconstructions, latent interpolation, test negative ELBO and
#               the importance-weighted log-likelihood; vae-anomaly/: AUROC for a held-out class
#   gan/        the W4 DCGAN: sample grids and the D/G loss curves
#   flow/       the W5 RealNVP: samples at several temperatures, test bits/dim
#   diffusion/  the W6 DDPM: DDIM sample grid and the loss curve
#   gpt/        the W7 character GPT on Debian's fortunes: validation loss, generated text
#   summary.md  the figures of every run and the pictures to open
# The image families also report FID and Inception Score of their samples through kiln's
# Fashion-MNIST feature network (weights/fashion-features.safetensors).
# Each run writes log.csv, config.txt, loss.png, summary.txt, a checkpoint and the weights.
# KILN_DEMO_SCALE=N multiplies every training budget (default 1: a few minutes per family on 2
# cores). Missing Debian packages are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(g++ cmake ninja-build doctest-dev dataset-fashion-mnist fortunes)

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
scale="${KILN_DEMO_SCALE:-1}"
families=(mlp vae gan flow diffusion gpt)

echo "==> configuring (build/release)"
cmake --preset release -DKILN_BUILD_TESTS=OFF -DKILN_BUILD_BENCHMARKS=OFF -DKILN_WERROR=OFF -DKILN_EXTRA_PROGRAM_FLAGS= \
  "-DCMAKE_CXX_FLAGS_RELEASE=-O3 -DNDEBUG" >/dev/null
echo "==> building the examples: ${families[*]}"
cmake --build build/release --target "${families[@]}" -j"${KILN_BUILD_JOBS:-2}"

out=demo-out
mkdir -p "$out"
run() {
  local name="$1"; shift
  echo
  echo "==> build/release/examples/$*"
  local start=$SECONDS
  "build/release/examples/$1" "${@:2}"
  echo "$name $((SECONDS - start))" >>"$out/.seconds"
}
rm -f "$out/.seconds"
run mlp mlp --data "$data_dir" --epochs $((2 * scale)) --out "$out/mlp"
run vae vae --data "$data_dir" --epochs $((5 * scale)) --out "$out/vae"
run vae-anomaly vae --data "$data_dir" --epochs $((2 * scale)) --holdout-class 8 --iw-k 0 --fid-samples 0 --out "$out/vae-anomaly"
run gan gan --data "$data_dir" --steps $((1500 * scale)) --out "$out/gan"
run flow flow --data "$data_dir" --steps $((1500 * scale)) --fid-samples 5000 --out "$out/flow"
run diffusion diffusion --data "$data_dir" --steps $((300 * scale)) --ddpm-every 0 --fid-samples 250 --out "$out/diffusion"
run gpt gpt --steps $((200 * scale)) --out "$out/gpt"  # the fortunes corpus from Debian's fortunes package

# summary.md: every run's figures (its summary.txt) and pictures.
{
  echo "# kiln demo"
  echo
  echo "Fashion-MNIST from \`$data_dir\`; kiln $(build/release/examples/mlp --version | sed 's/.*kiln //; s/)//'),"
  echo "$(nproc) cores, budget scale $scale. Every folder also holds log.csv, config.txt and checkpoints."
  for run_dir in mlp vae vae-anomaly gan flow diffusion gpt; do
    [ -d "$out/$run_dir" ] || continue
    echo
    echo "## $run_dir ($(awk -v n="$run_dir" '$1 == n {print $2}' "$out/.seconds") s)"
    echo
    if [ -f "$out/$run_dir/summary.txt" ]; then
      sed 's/^/    /' "$out/$run_dir/summary.txt"
    elif [ -f "$out/$run_dir/log.csv" ]; then
      echo "    last log row: $(head -n 1 "$out/$run_dir/log.csv") = $(tail -n 1 "$out/$run_dir/log.csv")"
    fi
    echo
    if [ -f "$out/$run_dir/samples.txt" ]; then
      echo "Generated text (\`$run_dir/samples.txt\`):"
      echo
      head -c 600 "$out/$run_dir/samples.txt" | sed 's/^/    /'
      echo
    fi
    for png in "$out/$run_dir"/*.png; do
      [ -f "$png" ] && echo "- ![${png##*/}](${png#"$out"/})"
    done
  done
} >"$out/summary.md"
rm -f "$out/.seconds"
echo
echo "==> $out/summary.md lists the figures and the pictures of every family:"
cat "$out/summary.md"
