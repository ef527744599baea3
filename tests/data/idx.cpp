// Tests of include/kiln/data/idx.hpp and include/kiln/data/fashion_mnist.hpp: synthetic IDX data
// of every element type, headers that lie, plain and gzip files, small synthetic Fashion-MNIST
// directories, and (when Debian's dataset-fashion-mnist is installed) the real files against
// counts and sums computed with Python's gzip module.
#include <doctest/doctest.h>
#include <kiln/data/fashion_mnist.hpp>
#include <kiln/data/idx.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using Bytes = std::vector<std::uint8_t>;

// Big-endian IDX data: 00 00 TYPE NDIM, the extents, then `payload` (already big-endian).
Bytes idx_bytes(std::uint8_t type, const std::vector<std::uint32_t>& dims, const Bytes& payload) {
  Bytes b = {0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<std::uint8_t>(d >> shift));
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

// The big-endian bytes of each value, written from its bits most significant byte first.
template <class T>
Bytes big_endian(const std::vector<T>& values) {
  Bytes b;
  for (T v : values) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));  // the low sizeof(T) bytes on a little-endian host
    for (int k = static_cast<int>(sizeof(T)) - 1; k >= 0; --k)
      b.push_back(static_cast<std::uint8_t>(bits >> (8 * k)));
  }
  return b;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("kiln_test_data_idx_" + std::to_string(static_cast<long>(::getpid()))) / name;
  std::filesystem::create_directories(dir);
  return dir;
}

void write_file(const std::filesystem::path& path, const Bytes& b) {
  std::FILE* f = std::fopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
  std::fclose(f);
}

bool have_gzip() { return std::system("gzip --version > /dev/null 2>&1") == 0; }

template <class T>
void check_round_trip(std::uint8_t type, const std::vector<T>& values) {
  CAPTURE(kiln::data::idx_type_name(type));
  const std::vector<std::uint32_t> dims = {2, static_cast<std::uint32_t>(values.size() / 2)};
  const Bytes file = idx_bytes(type, dims, big_endian(values));
  const kiln::data::IdxArray a = kiln::data::parse_idx(file, "synthetic");
  CHECK(a.type == type);
  CHECK(a.dims == std::vector<kiln::index_t>{2, static_cast<kiln::index_t>(values.size() / 2)});
  CHECK(a.numel() == static_cast<kiln::index_t>(values.size()));
  CHECK(a.bytes.size() == values.size() * sizeof(T));
  CHECK(a.values<T>() == values);
  // The overload that reuses the vector gives the same array.
  const kiln::data::IdxArray moved = kiln::data::parse_idx(Bytes(file), "synthetic");
  CHECK(moved.bytes == a.bytes);
  CHECK(moved.dims == a.dims);
}

}  // namespace

TEST_CASE("IDX arrays of every element type") {
  check_round_trip<std::uint8_t>(kiln::data::idx_uint8, {0, 1, 127, 128, 254, 255});
  check_round_trip<std::int8_t>(kiln::data::idx_int8, {-128, -1, 0, 1, 100, 127});
  check_round_trip<std::int16_t>(kiln::data::idx_int16, {-32768, -2, 258, 32767});
  check_round_trip<std::int32_t>(kiln::data::idx_int32, {0x01020304, -5, 2147483647, -2147483647 - 1});
  check_round_trip<float>(kiln::data::idx_float32, {1.5f, -0.15625f, 3.0e38f, 1.0e-40f});
  check_round_trip<double>(kiln::data::idx_float64, {3.141592653589793, -2.5e-300, 0.0, 1e300});
  // Bytes by hand: int16 0x0102 is 258, float32 3f c0 00 00 is 1.5.
  const auto i16 = kiln::data::parse_idx(Bytes{0, 0, 0x0B, 1, 0, 0, 0, 1, 0x01, 0x02});
  CHECK(i16.values<std::int16_t>() == std::vector<std::int16_t>{258});
  const auto f32 = kiln::data::parse_idx(Bytes{0, 0, 0x0D, 1, 0, 0, 0, 1, 0x3f, 0xc0, 0, 0});
  CHECK(f32.values<float>() == std::vector<float>{1.5f});
  // Asking for the wrong element type.
  CHECK(error_of([&] { (void)f32.values<double>(); }) ==
        "kiln::IdxArray::values: the array holds float32, not float64");
  // A zero extent: no data, whatever the other extents say.
  const auto empty = kiln::data::parse_idx(idx_bytes(0x08, {0, 0xFFFFFFFFu, 0xFFFFFFFFu}, {}));
  CHECK(empty.numel() == 0);
  CHECK(empty.bytes.empty());
  CHECK(empty.dims[1] == 0xFFFFFFFFll);
}

TEST_CASE("IDX headers that lie are errors naming the file and offset") {
  CHECK(error_of([] { kiln::data::parse_idx(Bytes{}, "e.idx"); }) ==
        "kiln::parse_idx: e.idx: offset 0: unexpected end of data in the IDX header (expected 4 "
        "bytes 00 00 TYPE NDIM, found 0)");
  CHECK(error_of([] { kiln::data::parse_idx(Bytes{1, 0, 8, 1, 0, 0, 0, 0}, "m.idx"); }) ==
        "kiln::parse_idx: m.idx: offset 0: expected the IDX magic 00 00, found 01 00");
  CHECK(contains(error_of([] { kiln::data::parse_idx(Bytes{0, 0, 0x0A, 1, 0, 0, 0, 0}); }),
                 "offset 2: unknown element type 0x0a"));
  CHECK(error_of([] { kiln::data::parse_idx(Bytes{0, 0, 8, 0}); }) ==
        "kiln::parse_idx: offset 3: 0 dimensions (expected 1 to 8)");
  CHECK(contains(error_of([] { kiln::data::parse_idx(idx_bytes(8, std::vector<std::uint32_t>(9, 1), {0})); }),
                 "offset 3: 9 dimensions (expected 1 to 8)"));
  // Three extents declared, two present.
  CHECK(error_of([] { kiln::data::parse_idx(Bytes{0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1}); }) ==
        "kiln::parse_idx: offset 12: unexpected end of data in the IDX header (3 extents need 16 "
        "header bytes, found 12)");
  // Data shorter and longer than the extents say.
  CHECK(error_of([] { kiln::data::parse_idx(idx_bytes(8, {2, 3}, Bytes(5, 1)), "s.idx"); }) ==
        "kiln::parse_idx: s.idx: offset 12: extents [2, 3] of uint8 need 6 bytes of data after the "
        "12-byte header, found 5");
  CHECK(contains(error_of([] { kiln::data::parse_idx(idx_bytes(0x0C, {2}, Bytes(9, 1))); }),
                 "extents [2] of int32 need 8 bytes of data after the 8-byte header, found 9"));
  // Extents whose product overflows, and a huge product that fits but disagrees with the data.
  CHECK(contains(error_of([] {
                   kiln::data::parse_idx(idx_bytes(0x0E, {0xFFFFFFFFu, 0xFFFFFFFFu, 3}, Bytes(8, 0)));
                 }),
                 "offset 4: extents [4294967295, 4294967295, 3] of float64 overflow"));
  CHECK(contains(error_of([] {
                   kiln::data::parse_idx(idx_bytes(0x08, {65536, 65536, 65536}, Bytes(16, 0)));
                 }),
                 "need 281474976710656 bytes of data"));
}

TEST_CASE("read_idx reads plain and gzip files") {
  const auto dir = scratch_dir("read");
  const std::vector<std::int16_t> values = {1, -2, 300, -400, 5000, -6000};
  const Bytes file = idx_bytes(0x0B, {3, 2}, big_endian(values));
  write_file(dir / "plain.idx", file);
  const auto plain = kiln::data::read_idx((dir / "plain.idx").string());
  CHECK(plain.values<std::int16_t>() == values);
  CHECK(plain.dims == std::vector<kiln::index_t>{3, 2});
  // Errors from a file carry its path.
  write_file(dir / "bad.idx", Bytes{0, 0, 8, 1, 0, 0, 0, 9});
  CHECK(contains(error_of([&] { kiln::data::read_idx((dir / "bad.idx").string()); }),
                 "kiln::parse_idx: " + (dir / "bad.idx").string() + ": offset 8: extents [9]"));
  if (have_gzip()) {
    REQUIRE(std::system(("gzip -k -f '" + (dir / "plain.idx").string() + "'").c_str()) == 0);
    const auto packed = kiln::data::read_idx((dir / "plain.idx.gz").string());
    CHECK(packed.values<std::int16_t>() == values);
    // The decompression bound applies.
    CHECK(contains(error_of([&] { kiln::data::read_idx((dir / "plain.idx.gz").string(), 10); }),
                   "max_output (10 bytes)"));
  }
  std::filesystem::remove_all(dir.parent_path());
}

TEST_CASE("find_fashion_mnist_dir: hint, then KILN_FASHION_MNIST, then Debian's directory") {
  const char* saved = std::getenv("KILN_FASHION_MNIST");
  const std::string saved_value = saved ? saved : "";
  ::unsetenv("KILN_FASHION_MNIST");
  CHECK(kiln::data::find_fashion_mnist_dir("") == "/usr/share/datasets/fashion-mnist");
  ::setenv("KILN_FASHION_MNIST", "/data/fm", 1);
  CHECK(kiln::data::find_fashion_mnist_dir("") == "/data/fm");
  CHECK(kiln::data::find_fashion_mnist_dir("/my/dir") == "/my/dir");
  ::setenv("KILN_FASHION_MNIST", "", 1);
  CHECK(kiln::data::find_fashion_mnist_dir("") == "/usr/share/datasets/fashion-mnist");
  if (saved) ::setenv("KILN_FASHION_MNIST", saved_value.c_str(), 1);
  else ::unsetenv("KILN_FASHION_MNIST");
}

TEST_CASE("load_fashion_mnist on small synthetic directories") {
  const auto dir = scratch_dir("fashion");
  // Two images: pixel k of image i is (i * 100 + k) % 256; labels 3 and 9.
  Bytes pixels(2 * 784);
  for (std::size_t i = 0; i < pixels.size(); ++i)
    pixels[i] = static_cast<std::uint8_t>(((i / 784) * 100 + i % 784) % 256);
  write_file(dir / "t10k-images-idx3-ubyte", idx_bytes(8, {2, 28, 28}, pixels));
  write_file(dir / "t10k-labels-idx1-ubyte", idx_bytes(8, {2}, {3, 9}));

  const auto set = kiln::data::load_fashion_mnist(dir.string(), "test");
  REQUIRE(set.images.shape() == kiln::Shape{2, 784});
  REQUIRE(set.labels.shape() == kiln::Shape{2});
  CHECK(set.labels.data()[0] == 3);
  CHECK(set.labels.data()[1] == 9);
  bool all_equal = true;
  for (std::size_t i = 0; i < pixels.size(); ++i)
    all_equal = all_equal && set.images.data()[i] == static_cast<float>(pixels[i]) / 255.0f;
  CHECK(all_equal);
  CHECK(set.images.data()[255] == 1.0f);  // pixel 255 of image 0
  CHECK(set.images.data()[0] == 0.0f);

  // The train split is absent: the error names the directory and both file names.
  CHECK(error_of([&] { kiln::data::load_fashion_mnist(dir.string(), "train"); }) ==
        "kiln::load_fashion_mnist: directory " + dir.string() +
            " has neither train-images-idx3-ubyte.gz nor train-images-idx3-ubyte (pass the "
            "directory, set KILN_FASHION_MNIST, or on Debian install the package "
            "dataset-fashion-mnist)");
  CHECK(contains(error_of([&] { kiln::data::load_fashion_mnist(dir.string(), "valid"); }),
                 "unknown split \"valid\""));

  // A .gz file wins over the plain one next to it.
  if (have_gzip()) {
    write_file(dir / "other", idx_bytes(8, {2}, {5, 6}));
    REQUIRE(std::system(("gzip -c '" + (dir / "other").string() + "' > '" +
                         (dir / "t10k-labels-idx1-ubyte.gz").string() + "'").c_str()) == 0);
    const auto gz = kiln::data::load_fashion_mnist(dir.string(), "test");
    CHECK(gz.labels.data()[0] == 5);
    CHECK(gz.labels.data()[1] == 6);
    std::filesystem::remove(dir / "t10k-labels-idx1-ubyte.gz");
  }

  // Counts that disagree, a label out of range, images of the wrong size.
  write_file(dir / "t10k-labels-idx1-ubyte", idx_bytes(8, {3}, {1, 2, 3}));
  CHECK(contains(error_of([&] { kiln::data::load_fashion_mnist(dir.string(), "test"); }),
                 "has 2 images but " + (dir / "t10k-labels-idx1-ubyte").string() + " has 3 labels"));
  write_file(dir / "t10k-labels-idx1-ubyte", idx_bytes(8, {2}, {1, 10}));
  CHECK(contains(error_of([&] { kiln::data::load_fashion_mnist(dir.string(), "test"); }),
                 ": label 10 at index 1 (expected 0 to 9)"));
  write_file(dir / "t10k-images-idx3-ubyte", idx_bytes(8, {1, 27, 29}, Bytes(27 * 29, 0)));
  CHECK(contains(error_of([&] { kiln::data::load_fashion_mnist(dir.string(), "test"); }),
                 "expected uint8 images [N, 28, 28], found uint8 [1, 27, 29]"));
  std::filesystem::remove_all(dir.parent_path());
}

TEST_CASE("the real Fashion-MNIST files") {
  const std::string dir = kiln::data::find_fashion_mnist_dir("");
  if (!std::filesystem::exists(std::filesystem::path(dir) / "train-images-idx3-ubyte.gz") &&
      !std::filesystem::exists(std::filesystem::path(dir) / "train-images-idx3-ubyte")) {
    MESSAGE("Fashion-MNIST is not installed in " << dir << "; skipping");
    return;
  }
  // Reference numbers from Python: gzip.open(path).read(), summed over bytes 16.. (the pixels).
  const auto raw = kiln::data::read_idx(dir + "/train-images-idx3-ubyte.gz");
  CHECK(raw.dims == std::vector<kiln::index_t>{60000, 28, 28});
  std::uint64_t total = 0;
  for (std::uint8_t p : raw.bytes) total += p;
  CHECK(total == 3431114169ull);

  for (const char* split : {"train", "test"}) {
    CAPTURE(split);
    const bool train = std::string(split) == "train";
    const kiln::index_t n = train ? 60000 : 10000;
    const auto set = kiln::data::load_fashion_mnist(dir, split);
    REQUIRE(set.images.shape() == kiln::Shape{n, 784});
    REQUIRE(set.labels.shape() == kiln::Shape{n});
    std::vector<kiln::index_t> per_class(10, 0);
    kiln::index_t out_of_range = 0;
    for (kiln::index_t i = 0; i < n; ++i) {
      const kiln::index_t label = set.labels.data()[i];
      if (label < 0 || label > 9) ++out_of_range;
      else ++per_class[static_cast<std::size_t>(label)];
    }
    CHECK(out_of_range == 0);
    CHECK(per_class == std::vector<kiln::index_t>(10, n / 10));
    const float* images = set.images.data();
    float lo = 1.0f, hi = 0.0f;
    for (kiln::index_t i = 0; i < n * 784; ++i) {
      lo = std::min(lo, images[i]);
      hi = std::max(hi, images[i]);
    }
    CHECK(lo == 0.0f);
    CHECK(hi == 1.0f);
    // The first label is 9 (ankle boot) in both splits; first-image pixel sums from Python:
    // sum(data[16:16 + 784]) is 76247 (train) and 33456 (test).
    CHECK(set.labels.data()[0] == 9);
    std::int64_t first_sum = 0;
    for (int k = 0; k < 784; ++k) first_sum += std::lround(images[k] * 255.0f);
    CHECK(first_sum == (train ? 76247 : 33456));
  }
}
