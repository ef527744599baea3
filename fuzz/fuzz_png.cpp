// libFuzzer entry point for kiln::io::decode_png: every input either decodes into an image whose
// pixel count matches width * height * channels or throws kiln::Error. Not part of the CMake build;
// build and run with
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
//       fuzz/fuzz_png.cpp -o fuzz_png
//   ./fuzz_png -max_total_time=60
#include <kiln/io/png_read.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const kiln::io::Image image = kiln::io::decode_png(data, size, "fuzz.png", std::size_t(1) << 24);
    if (image.pixels.size() != std::size_t(image.width) * std::size_t(image.height) * std::size_t(image.channels))
      std::abort();
  } catch (const kiln::Error&) {
  }
  return 0;
}
