// Tests for kiln/io/safetensors.hpp: half/bfloat16 conversions against hand values and
// brute-force nearest-value search, round trips for every stored dtype, files exchanged with
// PyTorch (tests/torch/safetensors_io.py), malformed files, a mutation fuzz loop and atomic writes.
#include <kiln/io/json.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/kiln.hpp>

#include "../support/torch_reference.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

namespace io = kiln::io;
namespace fs = std::filesystem;
using kiln::Tensor;

constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr double inf_d = std::numeric_limits<double>::infinity();

// A scratch directory removed at the end of the test.
struct ScratchDir {
  fs::path path;
  explicit ScratchDir(const std::string& tag) {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("kiln-io-safetensors-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + tag);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

Tensor<float> tensor_of(const std::vector<float>& values, kiln::Shape shape) {
  return kiln::from_vector(values, shape);
}
Tensor<double> tensor_of(const std::vector<double>& values, kiln::Shape shape) {
  return kiln::from_vector(values, shape);
}

std::uint32_t bits_of(float f) { return std::bit_cast<std::uint32_t>(f); }
std::uint64_t bits_of(double d) { return std::bit_cast<std::uint64_t>(d); }

// Equal bit for bit, except that NaN matches NaN.
bool same(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return bits_of(a) == bits_of(b);
}
bool same(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return bits_of(a) == bits_of(b);
}

// The 16-bit little-endian word at element `i` of a tensor's raw bytes.
std::uint16_t raw16(std::string_view raw, std::size_t i) {
  return static_cast<std::uint16_t>(static_cast<unsigned char>(raw[2 * i]) |
                                    (static_cast<unsigned char>(raw[2 * i + 1]) << 8));
}

// All finite non-negative halves (0x0000 ... 0x7BFF) as doubles, in increasing order.
const std::vector<double>& positive_halves() {
  static const std::vector<double> values = [] {
    std::vector<double> v;
    for (std::uint32_t h = 0; h <= 0x7BFF; ++h) v.push_back(std::ldexp(double(h & 0x3FF) + (h >> 10 ? 1024 : 0), int(h >> 10 ? (h >> 10) - 25 : -24)));
    return v;
  }();
  return values;
}

// The F16 bits nearest to `d`, ties to the even bit pattern, by searching the list of halves
// (independent of the bit manipulation in io::double_to_half_bits).
std::uint16_t nearest_half_by_search(double d) {
  const std::uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  const double m = std::fabs(d);
  if (std::isnan(d)) return 0x7E00;
  const auto& v = positive_halves();
  if (m >= 65520.0) return sign | 0x7C00;
  const auto it = std::lower_bound(v.begin(), v.end(), m);
  std::size_t hi = static_cast<std::size_t>(it - v.begin());
  if (hi < v.size() && v[hi] == m) return static_cast<std::uint16_t>(sign | hi);
  if (hi == v.size()) return static_cast<std::uint16_t>(sign | 0x7BFF);  // (65504, 65520)
  const std::size_t lo = hi - 1;
  const double dl = m - v[lo], dh = v[hi] - m;
  const std::size_t pick = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint16_t>(sign | pick);
}

// The BF16 bits nearest to `d`, ties to even, from the two bfloat16 neighbours of float(d)
// truncated (an independent route through exact double arithmetic).
std::uint16_t nearest_bfloat16_by_search(double d) {
  if (std::isnan(d)) return 0x7FC0;
  const std::uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  const double m = std::fabs(d);
  const auto value = [](std::uint32_t b) { return double(std::bit_cast<float>(b << 16)); };
  // Binary search for the largest finite bfloat16 bit pattern <= m.
  std::uint32_t lo = 0, hi = 0x7F7F;
  if (m >= value(0x7F7F)) {
    const double top = value(0x7F7F) + std::ldexp(1.0, 127 - 8);  // halfway to 2^128
    return m >= top ? sign | 0x7F80 : sign | 0x7F7F;
  }
  while (hi - lo > 1) {
    const std::uint32_t mid = (lo + hi) / 2;
    if (value(mid) <= m) lo = mid;
    else hi = mid;
  }
  if (value(lo) == m) return static_cast<std::uint16_t>(sign | lo);
  const double dl = m - value(lo), dh = value(hi) - m;
  const std::uint32_t pick = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint16_t>(sign | pick);
}

// 8-byte length + header + `data_bytes` zero bytes.
std::string file_with_header(const std::string& header, std::size_t data_bytes) {
  std::string out(8, '\0');
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + std::string(data_bytes, '\0');
}

// The message of the kiln::io::FormatError that opening `bytes` throws ("" if none).
std::string open_error(const std::string& bytes) {
  try {
    io::SafeTensorsFile::from_bytes(bytes, "bad.safetensors");
  } catch (const io::FormatError& e) {
    return e.what();
  }
  return "";
}

std::string hex_of(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", v);
  return buf;
}

double from_hex(const std::string& s) {
  if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  return std::strtod(s.c_str(), nullptr);  // hex floats, "inf" and "-inf"
}

}  // namespace

// -------------------------------------------------------------------------------------------
// Half and bfloat16 conversions
// -------------------------------------------------------------------------------------------

TEST_CASE("float -> F16 at hand-derived values") {
  // 1/3 = 1.0101...b * 2^-2: exponent 13 (0x3400), mantissa 0101010101|0101... rounds down.
  CHECK(io::float_to_half_bits(1.0f / 3.0f) == 0x3555);
  CHECK(io::float_to_half_bits(1.0f) == 0x3C00);
  CHECK(io::float_to_half_bits(-2.0f) == 0xC000);
  CHECK(io::float_to_half_bits(65504.0f) == 0x7BFF);     // largest half
  CHECK(io::float_to_half_bits(65519.996f) == 0x7BFF);   // just below the halfway point
  CHECK(io::float_to_half_bits(65520.0f) == 0x7C00);     // halfway to 2^16: ties to even = inf
  CHECK(io::float_to_half_bits(-1e6f) == 0xFC00);
  CHECK(io::float_to_half_bits(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
  CHECK(io::float_to_half_bits(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(io::float_to_half_bits(std::ldexp(1.0f, -25)) == 0x0000);  // tie between 0 and 2^-24: even
  CHECK(io::float_to_half_bits(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(io::float_to_half_bits(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 ulp: tie, even is 2
  CHECK(io::float_to_half_bits(std::ldexp(1023.5f, -24)) == 0x0400);  // rounds up into the normals
  CHECK(io::float_to_half_bits(1e-8f) == 0x0000);
  CHECK(io::float_to_half_bits(-1e-8f) == 0x8000);
  CHECK(io::float_to_half_bits(-0.0f) == 0x8000);
  CHECK(io::float_to_half_bits(inf_f) == 0x7C00);
  CHECK(io::float_to_half_bits(-inf_f) == 0xFC00);
  CHECK(io::float_to_half_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);      // tie, even below
  CHECK(io::float_to_half_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);  // tie, even above
  const std::uint16_t nan = io::float_to_half_bits(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7C00) == 0x7C00);
  CHECK((nan & 0x03FF) != 0);
  const std::uint16_t negative_nan = io::float_to_half_bits(-std::numeric_limits<float>::quiet_NaN());
  CHECK((negative_nan & 0x8000) == 0x8000);
  // A signalling NaN whose payload lies only in the low bits still stays a NaN.
  CHECK(std::isnan(io::half_bits_to_float(io::float_to_half_bits(std::bit_cast<float>(0x7F800001u)))));
}

TEST_CASE("F16 -> float at hand-derived values, and every half round-trips") {
  CHECK(io::half_bits_to_float(0x3555) == 0.333251953125f);
  CHECK(io::half_bits_to_float(0x3C00) == 1.0f);
  CHECK(io::half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(io::half_bits_to_float(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(io::half_bits_to_float(0x7BFF) == 65504.0f);
  CHECK(io::half_bits_to_float(0xFC00) == -inf_f);
  CHECK(bits_of(io::half_bits_to_float(0x8000)) == 0x80000000u);
  CHECK(std::isnan(io::half_bits_to_float(0x7E00)));
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = io::half_bits_to_float(static_cast<std::uint16_t>(h));
    if (((h & 0x7C00) == 0x7C00) && (h & 0x3FF)) {
      REQUIRE(std::isnan(f));
      continue;
    }
    REQUIRE(io::float_to_half_bits(f) == h);
    if ((h & 0x7FFF) <= 0x7BFF) REQUIRE(double(f) == (h & 0x8000 ? -1 : 1) * positive_halves()[h & 0x7FFF]);
  }
}

TEST_CASE("float -> F16 rounds midpoints to even and everything else to nearest") {
  const auto& v = positive_halves();
  for (std::uint32_t h = 0; h + 1 < v.size(); ++h) {
    const float mid = static_cast<float>((v[h] + v[h + 1]) / 2);  // exact: 12 significant bits
    REQUIRE(double(mid) == (v[h] + v[h + 1]) / 2);
    const std::uint16_t even = (h % 2 == 0) ? static_cast<std::uint16_t>(h) : static_cast<std::uint16_t>(h + 1);
    REQUIRE(io::float_to_half_bits(mid) == even);
    REQUIRE(io::float_to_half_bits(-mid) == (even | 0x8000));
    REQUIRE(io::float_to_half_bits(std::nextafter(mid, inf_f)) == h + 1);
    REQUIRE(io::float_to_half_bits(std::nextafter(mid, 0.0f)) == h);
  }
}

TEST_CASE("double -> F16 and BF16 round once (not through float)") {
  // 1 + 2^-11 is the midpoint between halves 1 and 1 + 2^-10; a bit above it must round up,
  // although float(1 + 2^-11 + 2^-40) is the midpoint itself, which would round down to even.
  CHECK(io::double_to_half_bits(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)) == 0x3C01);
  CHECK(io::float_to_half_bits(static_cast<float>(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40))) == 0x3C00);
  CHECK(io::double_to_half_bits(1.0 + std::ldexp(1.0, -11)) == 0x3C00);
  CHECK(io::double_to_half_bits(1.0 / 3.0) == 0x3555);
  CHECK(io::double_to_bfloat16_bits(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)) == 0x3F81);
  CHECK(io::double_to_bfloat16_bits(1.0 + std::ldexp(1.0, -8)) == 0x3F80);
  CHECK(io::double_to_bfloat16_bits(1.0 / 3.0) == 0x3EAB);
  CHECK(io::double_to_bfloat16_bits(1e300) == 0x7F80);
  CHECK(io::double_to_bfloat16_bits(-1e-300) == 0x8000);
  CHECK(io::double_to_half_bits(-inf_d) == 0xFC00);
  CHECK(io::double_to_half_bits(65519.999999) == 0x7BFF);
  CHECK(io::double_to_half_bits(65520.0) == 0x7C00);

  std::mt19937_64 gen(7);
  std::uniform_real_distribution<double> mantissa(1.0, 2.0);
  std::uniform_int_distribution<int> half_exponent(-28, 17), bf16_exponent(-140, 128);
  for (int i = 0; i < 20000; ++i) {
    double d = std::ldexp(mantissa(gen), half_exponent(gen)) * (i % 2 ? -1 : 1);
    REQUIRE(io::double_to_half_bits(d) == nearest_half_by_search(d));
    // Near a midpoint of two halves, just above or below it.
    const std::size_t h = static_cast<std::size_t>(gen() % (positive_halves().size() - 1));
    const double mid = (positive_halves()[h] + positive_halves()[h + 1]) / 2;
    const double near = i % 3 == 0 ? mid : std::nextafter(mid, i % 3 == 1 ? 0.0 : inf_d);
    REQUIRE(io::double_to_half_bits(near) == nearest_half_by_search(near));
    d = std::ldexp(mantissa(gen), bf16_exponent(gen)) * (i % 2 ? -1 : 1);
    REQUIRE(io::double_to_bfloat16_bits(d) == nearest_bfloat16_by_search(d));
    const double bf_mid = std::ldexp(1.0 + (2 * static_cast<double>(gen() % 128) + 1) / 256.0, bf16_exponent(gen) % 120);
    for (double x : {bf_mid, std::nextafter(bf_mid, 0.0), std::nextafter(bf_mid, inf_d)})
      REQUIRE(io::double_to_bfloat16_bits(x) == nearest_bfloat16_by_search(x));
  }
}

// -------------------------------------------------------------------------------------------
// Round trips
// -------------------------------------------------------------------------------------------

namespace {
const std::vector<float> special_floats = {
    1.0f / 3.0f, -0.0f, 0.0f, inf_f, -inf_f, std::numeric_limits<float>::quiet_NaN(), 1.0f, -2.5f,
    65504.0f, 65520.0f, std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(3.0f, -25),
    std::ldexp(1.0f, -14), 1e-40f /* float subnormal */, std::numeric_limits<float>::max(),
    std::numeric_limits<float>::denorm_min(), 1.0f + std::ldexp(1.0f, -11), 1.0f + std::ldexp(1.0f, -8),
    1.0f + 3 * std::ldexp(1.0f, -8), -123.456f, 0.1f, 1e10f, -7e-5f};
}  // namespace

TEST_CASE("F32 and F64 round trips are exact; F16/BF16 keep the nearest value") {
  const auto x = tensor_of(special_floats, {4, 6});
  for (io::DType dtype : {io::DType::F32, io::DType::F64, io::DType::F16, io::DType::BF16}) {
    CAPTURE(io::dtype_name(dtype));
    const std::string bytes = io::safetensors_bytes({{"x", x}}, {}, dtype);
    const auto file = io::SafeTensorsFile::from_bytes(bytes);
    REQUIRE(file.dtype("x") == dtype);
    REQUIRE(file.shape("x") == kiln::Shape{4, 6});
    REQUIRE(file.raw("x").size() == 24 * io::dtype_size(dtype));
    const auto as_float = file.get<float>("x").to_vector();
    const auto as_double = file.get<double>("x").to_vector();
    for (std::size_t i = 0; i < special_floats.size(); ++i) {
      CAPTURE(i);
      const float v = special_floats[i];
      float expected = v;
      if (dtype == io::DType::F16) expected = io::half_bits_to_float(io::float_to_half_bits(v));
      if (dtype == io::DType::BF16) expected = float(kiln::bfloat16(v));
      CHECK(same(as_float[i], expected));
      CHECK(same(as_double[i], double(expected)));
    }
  }
  // Hand values in the stored bytes: 1/3 -> F16 0x3555, BF16 0x3EAB, little endian.
  const auto third = tensor_of(std::vector<float>{1.0f / 3.0f, -0.0f, inf_f}, {3});
  const auto f16 = io::SafeTensorsFile::from_bytes(io::safetensors_bytes({{"t", third}}, {}, io::DType::F16));
  CHECK(raw16(f16.raw("t"), 0) == 0x3555);
  CHECK(raw16(f16.raw("t"), 1) == 0x8000);
  CHECK(raw16(f16.raw("t"), 2) == 0x7C00);
  CHECK(std::string(f16.raw("t").substr(0, 2)) == std::string("\x55\x35", 2));
  const auto bf16 = io::SafeTensorsFile::from_bytes(io::safetensors_bytes({{"t", third}}, {}, io::DType::BF16));
  CHECK(raw16(bf16.raw("t"), 0) == 0x3EAB);
  CHECK(raw16(bf16.raw("t"), 1) == 0x8000);
  CHECK(raw16(bf16.raw("t"), 2) == 0x7F80);
}

TEST_CASE("double tensors: F64 exact, F32/F16/BF16 rounded once") {
  const std::vector<double> values = {0.1, 1.0 / 3.0, -1e300, 1e-310, -0.0, 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40),
                                      std::numeric_limits<double>::quiet_NaN(), 65519.99, 2.0, -inf_d};
  const auto x = tensor_of(values, {2, 5});
  const auto f64 = io::SafeTensorsFile::from_bytes(io::safetensors_bytes({{"x", x}}, {}, io::DType::F64));
  const auto f32 = io::SafeTensorsFile::from_bytes(io::safetensors_bytes({{"x", x}}, {}, io::DType::F32));
  const auto f16 = io::SafeTensorsFile::from_bytes(io::safetensors_bytes({{"x", x}}, {}, io::DType::F16));
  const auto bf16 = io::SafeTensorsFile::from_bytes(io::safetensors_bytes({{"x", x}}, {}, io::DType::BF16));
  const auto a = f64.get<double>("x").to_vector();
  const auto b = f32.get<double>("x").to_vector();
  const auto c = f16.get<double>("x").to_vector();
  for (std::size_t i = 0; i < values.size(); ++i) {
    CAPTURE(i);
    CHECK(same(a[i], values[i]));
    CHECK(same(b[i], double(static_cast<float>(values[i]))));
    CHECK(same(c[i], double(io::half_bits_to_float(nearest_half_by_search(values[i])))));
    CHECK(raw16(f16.raw("x"), i) == (std::isnan(values[i]) ? raw16(f16.raw("x"), i) : nearest_half_by_search(values[i])));
    if (!std::isnan(values[i])) CHECK(raw16(bf16.raw("x"), i) == nearest_bfloat16_by_search(values[i]));
  }
  CHECK(raw16(f16.raw("x"), 5) == 0x3C01);  // rounded once from double
  // get<float> from F64 rounds to nearest.
  CHECK(f64.get<float>("x").to_vector()[0] == 0.1f);
}

TEST_CASE("header layout: compact JSON, __metadata__ first, names sorted, padded to 8 bytes") {
  const auto a = tensor_of(std::vector<float>{1.0f, 2.0f}, {2});
  // {"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} is 54 bytes; padded to 56.
  const std::string bytes = io::safetensors_bytes({{"a", a}});
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 54);
  CHECK(bytes.size() == 8 + 56 + 8);
  CHECK(bytes.substr(0, 8) == std::string("\x38\0\0\0\0\0\0\0", 8));
  CHECK(bytes.substr(8, 56) == header + "  ");
  CHECK(bytes.substr(64) == std::string("\0\0\x80\x3f\0\0\0\x40", 8));  // 1.0f, 2.0f little endian

  const auto b = tensor_of(std::vector<float>{3.0f}, {1, 1});
  const std::string two = io::safetensors_bytes({{"zeta", a}, {"Alpha", b}, {"beta", kiln::Tensor<float>(kiln::Shape{})}},
                                                {{"z", "last"}, {"format", "pt"}});
  const std::string expected_header =
      R"({"__metadata__":{"format":"pt","z":"last"},"Alpha":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},)"
      R"("beta":{"dtype":"F32","shape":[],"data_offsets":[4,8]},"zeta":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  const std::size_t padded = (expected_header.size() + 7) / 8 * 8;
  CHECK(two.substr(8, expected_header.size()) == expected_header);
  CHECK(two.substr(8 + expected_header.size(), padded - expected_header.size()) ==
        std::string(padded - expected_header.size(), ' '));
  const auto file = io::SafeTensorsFile::from_bytes(two);
  CHECK(file.names() == std::vector<std::string>{"Alpha", "beta", "zeta"});
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"z", "last"}});
  CHECK(file.data_offset() == 8 + padded);
  CHECK(file.get<float>("beta").dim() == 0);
  CHECK(file.get<float>("beta").item() == 0.0f);
  CHECK(file.get<float>("Alpha").item() == 3.0f);
}

TEST_CASE("views, empty tensors, 0-d tensors and metadata survive a file round trip") {
  ScratchDir dir("roundtrip");
  kiln::Rng rng(3);
  const auto m = kiln::randn<float>({3, 5}, rng);
  const auto view = m.t().slice(0, 1, 5, 2);  // [2, 3], non-contiguous
  const Tensor<float> empty(kiln::Shape{0, 4});
  const auto scalar = tensor_of(std::vector<float>{-1.25f}, {});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"quote\"and\\slash", "caf\xC3\xA9 \xE2\x9C\x93\n"}};
  const std::string path = dir / "model.safetensors";
  io::save_safetensors(path, {{"m", m}, {"view", view}, {"empty", empty}, {"scalar", scalar}}, meta);
  CHECK_FALSE(fs::exists(path + ".tmp"));
  const io::SafeTensorsFile file(path);
  CHECK(file.source() == path);
  CHECK(file.size() == 4);
  CHECK(file.metadata() == meta);
  CHECK(file.get<float>("m").to_vector() == m.to_vector());
  CHECK(file.get<float>("view").shape() == kiln::Shape{2, 3});
  CHECK(file.get<float>("view").to_vector() == view.to_vector());
  CHECK(file.get<float>("empty").shape() == kiln::Shape{0, 4});
  CHECK(file.info("empty").begin == file.info("empty").end);
  CHECK(file.get<double>("scalar").item() == -1.25);
  CHECK(file.contains("m"));
  CHECK_FALSE(file.contains("missing"));
}

TEST_CASE("writing rejects what the format cannot hold") {
  const auto a = tensor_of(std::vector<float>{1.0f}, {1});
  CHECK_THROWS_WITH_AS(io::safetensors_bytes({{"a", a}, {"a", a}}), doctest::Contains("two tensors are named 'a'"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(io::safetensors_bytes({{"__metadata__", a}}), doctest::Contains("reserved"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(io::safetensors_bytes({{"u", Tensor<float>()}}), doctest::Contains("'u' is undefined"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(io::safetensors_bytes({{"a", a}}, {}, io::DType::I64), doctest::Contains("not I64"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(io::safetensors_bytes({{"bad\xFF", a}}), doctest::Contains("must be valid UTF-8: invalid UTF-8 (byte 0xFF)"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(io::safetensors_bytes({{"a", a}}, {{"k", "\xC3"}}), doctest::Contains("valid UTF-8"), kiln::ValueError);
}

// -------------------------------------------------------------------------------------------
// PyTorch
// -------------------------------------------------------------------------------------------

TEST_CASE("kiln reads the file PyTorch writes, value for value") {
  ScratchDir dir("from-torch");
  const std::string file_path = dir / "torch.safetensors";
  const std::string expect_path = dir / "torch.json";
  REQUIRE(kiln::test::run_torch_script("safetensors_io.py", "write --out " + kiln::test::shell_quote(file_path) +
                                                               " --expect " + kiln::test::shell_quote(expect_path)) == 0);
  const io::SafeTensorsFile file(file_path);
  const io::Json expect = io::parse_json(io::read_file_bytes(expect_path), expect_path);
  std::map<std::string, std::string> meta;
  for (const auto& [key, value] : expect.at("metadata").as_object()) meta[key] = value.as_string();
  CHECK(file.metadata() == meta);
  CHECK(file.metadata().at("note").find("caf\xC3\xA9 \xE2\x9C\x93") != std::string::npos);
  const auto& tensors = expect.at("tensors").as_array();
  REQUIRE(file.size() == tensors.size());
  std::size_t floats_checked = 0, ints_checked = 0;
  for (const io::Json& entry : tensors) {
    const std::string& name = entry.at("name").as_string();
    CAPTURE(name);
    REQUIRE(file.contains(name));
    CHECK(io::dtype_name(file.dtype(name)) == entry.at("dtype").as_string());
    std::vector<kiln::index_t> shape;
    for (const io::Json& d : entry.at("shape").as_array()) shape.push_back(d.as_int64());
    CHECK(file.info(name).shape == shape);
    const auto& values = entry.at("values").as_array();
    if (io::is_convertible_float(file.dtype(name))) {
      const auto got = file.get<double>(name).to_vector();
      const auto got_f = file.get<float>(name).to_vector();
      REQUIRE(got.size() == values.size());
      for (std::size_t i = 0; i < values.size(); ++i) {
        CAPTURE(i);
        const double want = from_hex(values[i].as_string());
        CHECK(same(got[i], want));
        CHECK(same(got_f[i], static_cast<float>(want)));
        ++floats_checked;
      }
    } else {
      const std::string_view raw = file.raw(name);
      const std::size_t size = io::dtype_size(file.dtype(name));
      REQUIRE(raw.size() == values.size() * size);
      for (std::size_t i = 0; i < values.size(); ++i) {
        std::uint64_t u = 0;
        for (std::size_t k = 0; k < size; ++k) u |= std::uint64_t(static_cast<unsigned char>(raw[i * size + k])) << (8 * k);
        std::int64_t v = 0;
        if (file.dtype(name) == io::DType::I64) v = static_cast<std::int64_t>(u);
        else if (file.dtype(name) == io::DType::I32) v = static_cast<std::int32_t>(static_cast<std::uint32_t>(u));
        else v = static_cast<std::int64_t>(u);
        CHECK(v == values[i].as_int64());
        ++ints_checked;
      }
      CHECK_THROWS_WITH_AS(file.get<float>(name), doctest::Contains("use raw()"), kiln::ValueError);
    }
  }
  CHECK(floats_checked > 50);
  CHECK(ints_checked == 4 + 4 + 3);
}

TEST_CASE("PyTorch reads kiln's files: same header bytes as the reference layout, same values as torch's conversions") {
  ScratchDir dir("to-torch");
  kiln::Rng rng(11);
  // Values at every interesting rounding boundary, plus random ones over many magnitudes.
  std::vector<float> source = special_floats;
  for (std::uint32_t h : {0x0000u, 0x0001u, 0x03FEu, 0x03FFu, 0x3C00u, 0x3C01u, 0x7BFEu})
    source.push_back(static_cast<float>((positive_halves()[h] + positive_halves()[h + 1]) / 2));
  for (std::uint32_t b : {0x0000u, 0x0001u, 0x3F80u, 0x3F81u, 0x7F7Eu})
    source.push_back((std::bit_cast<float>(b << 16) + std::bit_cast<float>((b + 1) << 16)) / 2);
  const auto noise = kiln::randn<float>({40}, rng).to_vector();
  for (std::size_t i = 0; i < noise.size(); ++i) source.push_back(noise[i] * std::ldexp(1.0f, int(i % 40) - 20));
  source.resize(source.size() / 6 * 6);
  const auto x = tensor_of(source, {kiln::index_t(source.size() / 6), 6});
  const auto y = kiln::randn<float>({3, 4}, rng).t();  // a transposed view
  const auto scalar = tensor_of(std::vector<float>{-0.1f}, {});
  const Tensor<float> empty(kiln::Shape{2, 0});
  const std::vector<double> dsource = {0.1, 1.0 / 3.0, -1e300, 1e-310, -0.0, std::numeric_limits<double>::quiet_NaN(), 2.0,
                                       -inf_d};
  const auto dx = tensor_of(dsource, {2, 4});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "k\"iln\\ caf\xC3\xA9"}};

  const auto expect_entry = [](const std::string& name, io::DType dtype, const auto& t, const char* source_type) {
    io::Json entry = io::Json::object();
    entry.set("name", name);
    entry.set("dtype", io::dtype_name(dtype));
    io::Json shape = io::Json::array();
    for (int d = 0; d < t.dim(); ++d) shape.push_back(t.shape().dims[d]);
    entry.set("shape", shape);
    io::Json values = io::Json::array();
    for (auto v : t.to_vector()) values.push_back(hex_of(double(v)));
    entry.set("source", values);
    entry.set("source_type", source_type);
    return entry;
  };

  std::string args = "check";
  for (io::DType dtype : {io::DType::F32, io::DType::F64, io::DType::F16, io::DType::BF16}) {
    const std::string name = io::dtype_name(dtype);
    io::save_safetensors(dir / (name + ".safetensors"), {{"x", x}, {"y.t", y}, {"scalar", scalar}, {"empty", empty}}, meta,
                         dtype);
    io::Json expect = io::Json::object();
    io::Json meta_json = io::Json::object();
    for (const auto& [k, v] : meta) meta_json.set(k, v);
    expect.set("metadata", meta_json);
    io::Json list = io::Json::array();
    list.push_back(expect_entry("x", dtype, x, "float32"));
    list.push_back(expect_entry("y.t", dtype, y, "float32"));
    list.push_back(expect_entry("scalar", dtype, scalar, "float32"));
    list.push_back(expect_entry("empty", dtype, empty, "float32"));
    expect.set("tensors", list);
    io::write_file_atomic(dir / (name + ".json"), io::to_json(expect));
    args += " --in " + kiln::test::shell_quote(dir / (name + ".safetensors")) + " --expect " +
            kiln::test::shell_quote(dir / (name + ".json"));
  }
  // Double tensors stored as F64 and F32 (torch converts double -> float in one rounding too).
  for (io::DType dtype : {io::DType::F64, io::DType::F32}) {
    const std::string name = std::string("double-") + io::dtype_name(dtype);
    io::save_safetensors(dir / (name + ".safetensors"), {{"dx", dx}}, {}, dtype);
    io::Json expect = io::Json::object();
    expect.set("tensors", io::Json(io::Json::Array{expect_entry("dx", dtype, dx, "float64")}));
    io::write_file_atomic(dir / (name + ".json"), io::to_json(expect));
    args += " --in " + kiln::test::shell_quote(dir / (name + ".safetensors")) + " --expect " +
            kiln::test::shell_quote(dir / (name + ".json"));
  }
  CHECK(kiln::test::run_torch_script("safetensors_io.py", args) == 0);
}

// -------------------------------------------------------------------------------------------
// Malformed files
// -------------------------------------------------------------------------------------------

TEST_CASE("malformed files throw FormatError naming the problem") {
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(open_error(file_with_header(good, 8)).empty());

  // Too short to hold the length.
  CHECK(open_error(std::string("\x10\0\0", 3)).find("3 bytes long; a safetensors file starts with an 8-byte header length") !=
        std::string::npos);
  CHECK(open_error("").find("bad.safetensors: the file is 0 bytes long") != std::string::npos);
  // Header length beyond the file.
  std::string longer = file_with_header(good, 8);
  longer[0] = static_cast<char>(200);
  CHECK(open_error(longer).find("header length 200 (file bytes 0-7) runs past the end of the file (62 bytes follow") !=
        std::string::npos);
  // Header length 2^63.
  std::string huge = file_with_header(good, 8);
  for (int i = 0; i < 7; ++i) huge[static_cast<std::size_t>(i)] = 0;
  huge[7] = static_cast<char>(0x80);
  CHECK(open_error(huge).find("header length 9223372036854775808 (file bytes 0-7) is larger than the limit of 100000000") !=
        std::string::npos);
  // Truncated data: the offsets now run past the buffer.
  std::string truncated = file_with_header(good, 8);
  truncated.resize(truncated.size() - 3);
  CHECK(open_error(truncated).find("tensor 'a' (header entry at file byte 13): data_offsets [0, 8] (file byte 55) run past "
                                   "the end of the data buffer, which holds 5 bytes") != std::string::npos);
  // Invalid JSON: the offset is a file offset (8 + the offset in the header).
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32",,"shape":[2]}})", 0))
            .find("the header is not valid JSON: file byte 28: expected a string key in an object, found ','") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":)", 0)).find("not valid JSON: file byte 13") != std::string::npos);
  CHECK(open_error(file_with_header("[1, 2]", 0)).find("the header (file byte 8) is a JSON array, expected an object") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{}})", 4))
            .find("duplicate key \"a\"") != std::string::npos);
  // Overlaps.
  CHECK(open_error(file_with_header(
                       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       12))
            .find("tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 12]) overlap from file byte") !=
        std::string::npos);
  CHECK(open_error(file_with_header(
                       R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
                       8))
            .find("overlap") != std::string::npos);
  // Touching and empty tensors do not overlap; the buffer need not be covered.
  CHECK(open_error(file_with_header(
                       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                       R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}})",
                       20))
            .empty());
  // Out of range, reversed and malformed offsets.
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 12))
            .find("data_offsets [8, 16] (file byte 55) run past the end of the data buffer, which holds 12 bytes") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 12))
            .find("data_offsets [8, 4] (file byte 55) end before they begin") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0]}})", 12))
            .find("data_offsets (file byte 55) must be [begin, end], two non-negative integers") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[-4,0]}})", 12))
            .find("must be [begin, end]") != std::string::npos);
  // Size that disagrees with shape x dtype.
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 12))
            .find("tensor 'a' (header entry at file byte 13): data_offsets [0, 8] (file byte 55) hold 8 bytes but shape [3] of "
                  "F32 needs 12 bytes") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})", 12))
            .find("shape [2, 2] of BF16 needs 8 bytes") != std::string::npos);
  // dtype problems.
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8))
            .find("tensor 'a' (header entry at file byte 13): unknown dtype \"Q4\" (file byte 22) (known: BOOL, U8") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8))
            .find("dtype (file byte 22) is not a string") != std::string::npos);
  // Shape problems.
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8))
            .find("shape entry 0 (file byte 37) is 2.5, expected a non-negative integer") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8))
            .find("shape entry 0 (file byte 37) is 2.0, expected") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[1,"2"],"data_offsets":[0,8]}})", 8))
            .find("shape entry 1 (file byte 39) is a string") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8))
            .find("shape entry 0 (file byte 37) is -2") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8))
            .find("shape (file byte 36) is not an array") != std::string::npos);
  CHECK(open_error(file_with_header(
                       R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})", 8))
            .find("extents whose product does not fit in 64 bits") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}})", 8))
            .find("shape entry 0") != std::string::npos);
  // Missing fields, wrong kinds.
  CHECK(open_error(file_with_header(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8))
            .find("tensor 'a' (header entry at file byte 13) has no \"dtype\"") != std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8)).find("has no \"shape\"") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2]}})", 8)).find("has no \"data_offsets\"") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"a":[1]})", 8))
            .find("tensor 'a' (header entry at file byte 13) is a JSON array, expected an object with dtype") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"__metadata__":{"k":1}})", 0))
            .find("__metadata__ (file byte 24): the value of \"k\" (file byte 29) is a number, expected a string") !=
        std::string::npos);
  CHECK(open_error(file_with_header(R"({"__metadata__":[]})", 0)).find("__metadata__ (file byte 24) is a JSON array") !=
        std::string::npos);
}

TEST_CASE("lookups and reads that the file cannot serve throw") {
  const std::string nine =
      file_with_header(R"({"deep":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]},)"
                       R"("i":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})",
                       16);
  const auto file = io::SafeTensorsFile::from_bytes(nine, "nine.safetensors");
  CHECK(file.info("deep").shape.size() == 9);
  CHECK_THROWS_WITH_AS(file.shape("deep"), doctest::Contains("tensor 'deep' has 9 dimensions; kiln tensors have at most 8"),
                       kiln::ShapeError);
  CHECK_THROWS_WITH_AS(file.get<float>("i"), doctest::Contains("nine.safetensors: tensor 'i' holds I64 elements"),
                       kiln::ValueError);
  CHECK(file.raw("i").size() == 8);
  CHECK_THROWS_WITH_AS(file.get<float>("nope"), doctest::Contains("no tensor named 'nope' (it has 'deep', 'i')"),
                       kiln::ValueError);
  CHECK_THROWS_WITH_AS(io::SafeTensorsFile("/nonexistent/dir/x.safetensors"),
                       doctest::Contains("cannot open '/nonexistent/dir/x.safetensors'"), io::FileError);
  ScratchDir dir("errors");
  CHECK_THROWS_WITH_AS(io::SafeTensorsFile(dir.path.string()), doctest::Contains("is not a regular file"), io::FileError);
  io::write_file_atomic(dir / "bad.safetensors", file_with_header("{", 0));
  CHECK_THROWS_WITH_AS(io::SafeTensorsFile(dir / "bad.safetensors"),
                       doctest::Contains(((dir / "bad.safetensors") + ": the header is not valid JSON: file byte 9").c_str()),
                       io::FormatError);
}

TEST_CASE("random mutations of a valid file load or throw kiln::Error, never crash") {
  kiln::Rng rng(5);
  const auto a = kiln::randn<float>({3, 4}, rng);
  const auto b = kiln::randn<float>({5}, rng);
  const std::string valid =
      io::safetensors_bytes({{"layer.weight", a}, {"layer.bias", b}}, {{"format", "pt"}}, io::DType::F16);
  const std::size_t header_size = static_cast<std::size_t>(io::SafeTensorsFile::from_bytes(valid).data_offset() - 8);
  const std::string interesting = "{}[]\":,0123456789-+.eE \\u\x01\xC3\xFF";
  std::mt19937_64 gen(12345);
  const auto pick = [&](std::size_t n) { return static_cast<std::size_t>(gen() % std::max<std::size_t>(n, 1)); };
  int loaded = 0, rejected = 0;
  for (int iteration = 0; iteration < 4000; ++iteration) {
    std::string bytes = valid;
    const int mutations = 1 + static_cast<int>(gen() % 4);
    for (int m = 0; m < mutations && bytes.size() > 8; ++m) {
      const std::size_t at = pick(bytes.size());
      switch (gen() % 7) {
        case 0: bytes[at] = static_cast<char>(gen()); break;                          // any byte
        case 1: bytes[8 + pick(bytes.size() - 8)] = interesting[pick(interesting.size())]; break;
        case 2: bytes.resize(at); break;                                             // truncate
        case 3: bytes.insert(at, 1, interesting[pick(interesting.size())]); break;
        case 4: bytes.erase(at, 1 + pick(4)); break;
        case 5: bytes[pick(8)] = static_cast<char>(gen()); break;                    // the length
        case 6: {                                                                    // a digit in the header
          const std::size_t d = bytes.find_first_of("0123456789", 8 + pick(header_size));
          if (d != std::string::npos && d < 8 + header_size) bytes[d] = static_cast<char>('0' + gen() % 10);
          break;
        }
      }
    }
    try {
      const auto file = io::SafeTensorsFile::from_bytes(bytes);
      for (const std::string& name : file.names()) {
        (void)file.raw(name);
        if (io::is_convertible_float(file.dtype(name)) && file.info(name).shape.size() <= 8) {
          const auto t = file.get<float>(name);
          REQUIRE(static_cast<std::uint64_t>(t.numel()) * io::dtype_size(file.dtype(name)) == file.raw(name).size());
        }
      }
      ++loaded;
    } catch (const kiln::Error&) {
      ++rejected;
    }
  }
  CHECK(loaded > 100);
  CHECK(rejected > 1000);
}

// -------------------------------------------------------------------------------------------
// Atomic writes
// -------------------------------------------------------------------------------------------

TEST_CASE("write_file_atomic replaces a file whole, or leaves it untouched when it fails") {
  ScratchDir dir("atomic");
  const std::string path = dir / "weights.safetensors";
  const auto a = tensor_of(std::vector<float>{1.0f, 2.0f, 3.0f}, {3});
  io::save_safetensors(path, {{"a", a}});
  const std::string original = io::read_file_bytes(path);

  // A longer file replaced by a shorter one keeps nothing of the old bytes.
  io::write_file_atomic(dir / "text", "a long first version");
  io::write_file_atomic(dir / "text", "short");
  CHECK(io::read_file_bytes(dir / "text") == "short");
  CHECK_FALSE(fs::exists(dir / "text.tmp"));

  // The temporary file cannot be created (a directory has its name): the old file is untouched.
  fs::create_directory(path + ".tmp");
  const auto b = tensor_of(std::vector<float>{9.0f}, {1});
  CHECK_THROWS_WITH_AS(io::save_safetensors(path, {{"b", b}}),
                       doctest::Contains(("cannot create the temporary file '" + path + ".tmp'").c_str()), io::FileError);
  CHECK(io::read_file_bytes(path) == original);
  CHECK(io::SafeTensorsFile(path).get<float>("a").to_vector() == std::vector<float>{1.0f, 2.0f, 3.0f});
  fs::remove(path + ".tmp");

  // The rename cannot happen (the target is a non-empty directory): the temporary file is cleaned up.
  fs::create_directories(dir / "occupied/inside");
  CHECK_THROWS_WITH_AS(io::write_file_atomic(dir / "occupied", "x"), doctest::Contains("cannot rename"), io::FileError);
  CHECK_FALSE(fs::exists(dir / "occupied.tmp"));
  CHECK(fs::is_directory(dir / "occupied/inside"));

  // A missing directory.
  CHECK_THROWS_AS(io::write_file_atomic(dir / "no/such/dir/file", "x"), io::FileError);

  // A successful save replaces the file.
  io::save_safetensors(path, {{"b", b}});
  CHECK(io::SafeTensorsFile(path).names() == std::vector<std::string>{"b"});
}
