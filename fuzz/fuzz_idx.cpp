// libFuzzer entry point for kiln::data::parse_idx: every input either parses into an array whose
// extents multiply to its element count or throws kiln::Error. Not part of the CMake build;
// build and run with
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
//       fuzz/fuzz_idx.cpp -o fuzz_idx
//   ./fuzz_idx -max_total_time=60
#include <kiln/data/idx.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto array = kiln::data::parse_idx(std::vector<std::uint8_t>(data, data + size), "fuzz.idx");
    const std::size_t element = kiln::data::idx_element_size(array.type);
    if (element == 0 || array.bytes.size() != static_cast<std::size_t>(array.numel()) * element)
      std::abort();
  } catch (const kiln::Error&) {
  }
  return 0;
}
