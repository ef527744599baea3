// libFuzzer entry point for kiln::data::ByteLevelBPE: the first byte chooses what the rest is.
//   even: a vocab.json and a merges.txt separated by the first '\0'; loading either succeeds or
//         throws kiln::Error, and a loaded vocabulary encodes a fixed text (and the input's tail)
//         back to the same bytes;
//   odd:  a text encoded with a small vocabulary trained at start-up; decode(encode(text)) must
//         give the text's bytes back exactly and decode_lossy must give valid UTF-8.
// Any other outcome aborts. Not part of the CMake build; build and run with
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Ibackends/cpu/include \
//       fuzz/fuzz_bpe.cpp -o fuzz_bpe
//   ./fuzz_bpe -max_total_time=60
#include <kiln/data/tokenizer.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

const kiln::data::ByteLevelBPE& trained() {
  static const kiln::data::ByteLevelBPE bpe = [] {
    std::string text;
    for (int i = 0; i < 50; ++i)
      text += "the quick brown fox's caf\xC3\xA9 jumps over 12 lazy dogs \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80!\n";
    return kiln::data::ByteLevelBPE::train(text, 400);
  }();
  return bpe;
}

void check_round_trip(const kiln::data::ByteLevelBPE& bpe, std::string_view text) {
  const auto ids = bpe.encode(text);
  if (bpe.decode(ids) != text) std::abort();
  if (!kiln::data::is_valid_utf8(bpe.decode_lossy(ids))) std::abort();
  const auto special = bpe.encode(text, kiln::data::SpecialTokens::allowed);
  if (bpe.decode(special) != text) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 1) {
    check_round_trip(trained(), input);
    return 0;
  }
  const std::size_t split = input.find('\0');
  const std::string_view vocab = input.substr(0, split);
  const std::string_view merges = split == std::string_view::npos ? std::string_view() : input.substr(split + 1);
  kiln::data::BpeLimits limits;
  limits.max_file_bytes = 1 << 20;
  try {
    const auto bpe = kiln::data::ByteLevelBPE::from_text(vocab, merges, "fuzz.json", "fuzz.txt", limits);
    check_round_trip(bpe, "Hello, world! 123 caf\xC3\xA9 <|endoftext|>\xFF");
    check_round_trip(bpe, merges.substr(0, 256));
  } catch (const kiln::Error&) {
  }
  return 0;
}
