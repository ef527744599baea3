// libFuzzer entry point for kiln::io::gunzip and kiln::io::inflate: every input either decodes
// within the output bound or throws kiln::Error. Not part of the CMake build; build and run with
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
//       fuzz/fuzz_gunzip.cpp -o fuzz_gunzip
//   ./fuzz_gunzip -max_total_time=60 [CORPUS_DIR]
// (a corpus of small .gz files, e.g. made with `gzip -k`, helps it reach the dynamic blocks).
#include <kiln/io/gzip.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::size_t max_output = std::size_t(1) << 20;
  try {
    const auto out = kiln::io::gunzip(data, size, max_output, "fuzz.gz");
    if (out.size() > max_output) std::abort();
  } catch (const kiln::Error&) {
  }
  try {
    std::size_t used = 0;
    const auto out = kiln::io::inflate(data, size, max_output, &used);
    if (out.size() > max_output || used > size) std::abort();
  } catch (const kiln::Error&) {
  }
  return 0;
}
