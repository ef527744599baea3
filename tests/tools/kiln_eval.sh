#!/usr/bin/env bash
# Runs kiln-eval on small inputs whose answers are known by hand: BLEU of identical text (100) and of
# "the cat sat on the mat" against "the cat is on the mat" (precisions 5/6, 3/5, 1/4 and, with
# sacreBLEU's exp smoothing, 100/(2*3) for the empty 4-grams: BLEU = (83.33*60*25*16.67)^(1/4) =
# 37.99), ROUGE-1 of the same pair (P = R = F1 = 5/6), FID of a set of images with itself (0), and the
# errors for mismatched line counts, an empty hypothesis file, a missing file and images of two sizes;
# the perplexity of a GPT-2 whose weights are all zero (every logit 0: uniform over the 5-character
# vocabulary, so perplexity 5 exactly, whatever the window and stride).
#   kiln_eval.sh KILN_EVAL FASHION_MNIST_TEST_IMAGES
set -uo pipefail
eval_bin="$1"
test_images="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
expect() {  # expect NAME PATTERN COMMAND... : the output (stdout+stderr) must match PATTERN
  local name="$1" pattern="$2"
  shift 2
  local out
  out="$("$@" 2>&1)"
  if grep -Eq -- "$pattern" <<<"$out"; then
    echo "ok   $name"
  else
    echo "FAIL $name: expected /$pattern/, got: $out"
    failures=$((failures + 1))
  fi
}

printf 'the cat sat on the mat\n' >"$work/hyp.txt"
printf 'the cat is on the mat\n' >"$work/ref.txt"
printf 'the cat sat on the mat\nand one more line\n' >"$work/ref2.txt"
: >"$work/empty.txt"
expect "bleu identical" '^BLEU = 100\.00 100\.0/100\.0/100\.0/100\.0' "$eval_bin" bleu --hyp "$work/hyp.txt" --ref "$work/hyp.txt"
expect "bleu by hand" '^BLEU = 37\.99 83\.3/60\.0/25\.0/16\.7 \(BP = 1\.000' "$eval_bin" bleu --hyp "$work/hyp.txt" --ref "$work/ref.txt"
expect "bleu json" '"score": 37\.99' "$eval_bin" bleu --hyp "$work/hyp.txt" --ref "$work/ref.txt" --json
expect "rouge1 by hand" '^rouge1 +P 0\.8333  R 0\.8333  F1 0\.8333' "$eval_bin" rouge --hyp "$work/hyp.txt" --ref "$work/ref.txt"
expect "line counts differ" 'ref2\.txt has 2 lines but .*hyp\.txt has 1' "$eval_bin" bleu --hyp "$work/hyp.txt" --ref "$work/ref2.txt"
expect "empty hypotheses" 'empty\.txt: the hypothesis file is empty' "$eval_bin" rouge --hyp "$work/empty.txt" --ref "$work/ref.txt"
expect "missing file" 'nothere\.idx: no such file' "$eval_bin" fid --real "$work/nothere.idx" --fake "$work/nothere.idx"
expect "usage error" 'unknown command' "$eval_bin" frechet
expect "inception needs weights" 'needs --weights FILE' "$eval_bin" fid --real "$work/hyp.txt" --fake "$work/hyp.txt" --features inception

# 300 test images as an IDX file (header: 0x00000803, N, 28, 28), made with head/printf only.
{
  printf '\x00\x00\x08\x03\x00\x00\x01\x2c\x00\x00\x00\x1c\x00\x00\x00\x1c'
  gzip -dc "$test_images" | tail -c +17 | head -c $((300 * 784))
} >"$work/a.idx"
expect "fid with itself" '^FID -?0\.0000 \(300 real, 300 generated' "$eval_bin" fid --real "$work/a.idx" --fake "$work/a.idx"
expect "inception score" '^Inception Score [0-9.]+ ± [0-9.]+ \(10 splits, 300 images' "$eval_bin" is --images "$work/a.idx"
# Two PNGs of different sizes: a 1x1 and a 2x1 gray image, written byte by byte with their CRCs by
# python3's zlib when it is there; otherwise the check is reported as not run.
if command -v python3 >/dev/null 2>&1; then
  mkdir -p "$work/png"
  python3 - "$work/png" <<'PY'
import struct, sys, zlib
def png(w, h):
    def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
    rows = b''.join(b'\x00' + bytes(w) for _ in range(h))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b'')
open(sys.argv[1] + '/a.png', 'wb').write(png(28, 28))
open(sys.argv[1] + '/b.png', 'wb').write(png(27, 28))
PY
  expect "png sizes differ" 'b\.png: image is 27x28 but .*a\.png is 28x28' "$eval_bin" is --images "$work/png"
  rm "$work/png/a.png"
  python3 - "$work/png" <<'PY'
import struct, sys, zlib
def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
rows = b''.join(b'\x00' + bytes(27) for _ in range(28))
open(sys.argv[1] + '/c.png', 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 27, 28, 8, 0, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))
PY
  expect "fashion needs 28x28" 'images are 27x28; the Fashion-MNIST feature network takes 28x28' "$eval_bin" is --images "$work/png"
fi
if command -v python3 >/dev/null 2>&1; then
  mkdir -p "$work/gpt"
  python3 - "$work/gpt" <<'PY'
import json, struct, sys
E, V, P, L = 8, 5, 16, 1
shapes = {"wte.weight": [V, E], "wpe.weight": [P, E], "ln_f.weight": [E], "ln_f.bias": [E]}
for i in range(L):
    h = f"h.{i}."
    shapes.update({h + "ln_1.weight": [E], h + "ln_1.bias": [E], h + "attn.c_attn.weight": [E, 3 * E],
                   h + "attn.c_attn.bias": [3 * E], h + "attn.c_proj.weight": [E, E], h + "attn.c_proj.bias": [E],
                   h + "ln_2.weight": [E], h + "ln_2.bias": [E], h + "mlp.c_fc.weight": [E, 4 * E],
                   h + "mlp.c_fc.bias": [4 * E], h + "mlp.c_proj.weight": [4 * E, E], h + "mlp.c_proj.bias": [E]})
header, offset = {}, 0
for name, shape in shapes.items():
    n = 4
    for d in shape: n *= d
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
    offset += n
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[1] + "/model.safetensors", "wb").write(struct.pack("<Q", len(text)) + text + bytes(offset))
json.dump({"n_head": 2, "n_layer": L, "n_embd": E, "vocab_size": V, "n_positions": P}, open(sys.argv[1] + "/config.json", "w"))
json.dump({"type": "char", "vocabulary": list("abcde")}, open(sys.argv[1] + "/tokenizer.json", "w"))
open(sys.argv[1] + "/text.txt", "w").write("abcdeedcbaabcde" * 3)
PY
  expect "ppl of a uniform model" '^perplexity 5\.0000 \(mean NLL 1\.6094 nats over 44 tokens; window 16, stride 8\)' \
    "$eval_bin" ppl --model "$work/gpt/model.safetensors" --text "$work/gpt/text.txt"
  expect "ppl unknown character" "character" "$eval_bin" ppl --model "$work/gpt/model.safetensors" --text "$work/hyp.txt"
fi
[ "$failures" -eq 0 ] || { echo "$failures check(s) failed"; exit 1; }
