// Tests of include/kiln/io/png.hpp: CRC-32 and Adler-32 against published check values, a 1x1
// PNG spelled out byte by byte, DEFLATE streams decoded by kiln's own inflate (stored, fixed and
// dynamic blocks, the 32 KiB window), PNGs decoded by Python's zlib (tests/torch/png_check.py:
// chunk CRCs, zlib header and Adler-32, every row filter) and by inflate with a reference
// un-filter here, hand-derived row filters, argument errors, write_png, and image_grid.
#include <doctest/doctest.h>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/factories.hpp>
#include <kiln/io/gzip.hpp>
#include <kiln/io/png.hpp>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace {

using Bytes = std::vector<std::uint8_t>;

const std::uint8_t* bytes_of(const char* text) { return reinterpret_cast<const std::uint8_t*>(text); }

std::uint32_t be32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(s[at + i]);
  return v;
}

// Adler-32 straight from its definition (RFC 1950, 8.2), one modulo per byte.
std::uint32_t adler32_reference(const Bytes& data) {
  std::uint32_t a = 1, b = 0;
  for (std::uint8_t byte : data) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

struct Chunk {
  std::string type;
  std::string data;
};

// The chunks of a PNG file; checks the signature and every CRC (kiln::io::crc32, itself
// checked against the published values below).
std::vector<Chunk> parse_chunks(const std::string& png) {
  REQUIRE(png.size() >= 8);
  REQUIRE(png.compare(0, 8, std::string("\x89PNG\r\n\x1a\n", 8)) == 0);
  std::vector<Chunk> chunks;
  std::size_t at = 8;
  while (at < png.size()) {
    REQUIRE(png.size() - at >= 12);
    const std::uint32_t length = be32(png, at);
    REQUIRE(png.size() - at - 12 >= length);
    Chunk c{png.substr(at + 4, 4), png.substr(at + 8, length)};
    const std::string covered = c.type + c.data;
    CHECK(be32(png, at + 8 + length) == kiln::io::crc32(bytes_of(covered.c_str()), covered.size()));
    chunks.push_back(c);
    at += 12 + length;
  }
  return chunks;
}

// The filtered rows of a PNG: the zlib stream of its IDAT chunks, header checked, inflated by
// kiln::io::inflate, Adler-32 checked with the reference above.
Bytes filtered_rows(const std::string& png) {
  const std::vector<Chunk> chunks = parse_chunks(png);
  REQUIRE(chunks.size() >= 3);
  CHECK(chunks.front().type == "IHDR");
  CHECK(chunks.back().type == "IEND");
  CHECK(chunks.back().data.empty());
  std::string stream;
  for (std::size_t i = 1; i + 1 < chunks.size(); ++i) {
    CHECK(chunks[i].type == "IDAT");
    stream += chunks[i].data;
  }
  REQUIRE(stream.size() >= 6);
  const auto cmf = static_cast<std::uint8_t>(stream[0]);
  const auto flg = static_cast<std::uint8_t>(stream[1]);
  CHECK(cmf == 0x78);
  CHECK((cmf * 256 + flg) % 31 == 0);
  CHECK((flg & 0x20) == 0);  // no preset dictionary
  const Bytes rows = kiln::io::inflate(bytes_of(stream.c_str()) + 2, stream.size() - 6, std::size_t(1) << 30);
  CHECK(be32(stream, stream.size() - 4) == adler32_reference(rows));
  return rows;
}

// Undoes the row filters with the definitions of the PNG specification, 9.2-9.4.
Bytes unfilter(const Bytes& data, int width, int height, int channels, std::set<int>* types = nullptr) {
  const std::size_t row = std::size_t(width) * channels;
  REQUIRE(data.size() == (row + 1) * std::size_t(height));
  Bytes out(row * height);
  for (int y = 0; y < height; ++y) {
    const int type = data[y * (row + 1)];
    if (types) types->insert(type);
    for (std::size_t i = 0; i < row; ++i) {
      const int a = i >= std::size_t(channels) ? out[y * row + i - channels] : 0;
      const int b = y > 0 ? out[(y - 1) * row + i] : 0;
      const int c = (y > 0 && i >= std::size_t(channels)) ? out[(y - 1) * row + i - channels] : 0;
      int predicted = 0;
      if (type == 1) predicted = a;
      if (type == 2) predicted = b;
      if (type == 3) predicted = (a + b) / 2;
      if (type == 4) {
        const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
        predicted = (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
      }
      REQUIRE(type <= 4);
      out[y * row + i] = static_cast<std::uint8_t>(data[y * (row + 1) + 1 + i] + predicted);
    }
  }
  return out;
}

// A directory of its own under the system's temporary directory, removed at the end.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("kiln_test_png_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

void write_bytes(const std::filesystem::path& path, const void* data, std::size_t size) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  REQUIRE(f.good());
}

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs tests/torch/png_check.py (Python's zlib only) on `png` against the raw `pixels`; the
// interpreter is $KILN_PYTHON or /usr/bin/python3. Returns the exit status.
int python_check(const TempDir& dir, const std::string& name, const std::string& png, const Bytes& pixels,
                 int width, int height, int channels) {
  const char* env = std::getenv("KILN_PYTHON");
  const std::string python = env && *env ? env : "/usr/bin/python3";
  REQUIRE_MESSAGE(::access(python.c_str(), X_OK) == 0, "no Python interpreter at " << python);
  const auto png_path = dir.path / (name + ".png");
  const auto raw_path = dir.path / (name + ".raw");
  write_bytes(png_path, png.data(), png.size());
  write_bytes(raw_path, pixels.data(), pixels.size());
  const std::string command = quoted(python) + " " + quoted(std::string(KILN_SOURCE_DIR) + "/tests/torch/png_check.py") +
                              " " + quoted(png_path.string()) + " " + quoted(raw_path.string()) + " " +
                              std::to_string(width) + " " + std::to_string(height) + " " + std::to_string(channels) +
                              " > /dev/null";
  const int status = std::system(command.c_str());
  const int code = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code != 0) MESSAGE("exit status " << code << " from: " << command);
  return code;
}

Bytes random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes out(n);
  for (auto& b : out) b = static_cast<std::uint8_t>(rng() >> 24);
  return out;
}

// BTYPE of the first block of a raw DEFLATE stream (bits 1-2 of the first byte).
int first_block_type(const Bytes& stream) { return (stream.at(0) >> 1) & 3; }

Bytes round_trip(const Bytes& data) {
  const Bytes compressed = kiln::io::deflate_compress(data.data(), data.size());
  return kiln::io::inflate(compressed.data(), compressed.size(), data.size() + 1);
}

template <class F>
std::string value_error_of(F&& f) {
  try {
    f();
  } catch (const kiln::ValueError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("crc32 and adler32 give the published check values") {
  CHECK(kiln::io::crc32(bytes_of("IEND"), 4) == 0xAE426082u);
  CHECK(kiln::io::crc32(bytes_of("123456789"), 9) == 0xCBF43926u);
  CHECK(kiln::io::adler32(bytes_of("Wikipedia"), 9) == 0x11E60398u);
  CHECK(kiln::io::adler32(nullptr, 0) == 1u);
  // Long input: the deferred modulo (every 5552 bytes) agrees with one modulo per byte.
  const Bytes ones(100000, 0xFF);
  CHECK(kiln::io::adler32(ones.data(), ones.size()) == adler32_reference(ones));
  const Bytes noise = random_bytes(20011, 7);
  CHECK(kiln::io::adler32(noise.data(), noise.size()) == adler32_reference(noise));
  // Continuing from a previous value equals one pass over the concatenation.
  const std::uint32_t first = kiln::io::adler32(noise.data(), 9000);
  CHECK(kiln::io::adler32(noise.data() + 9000, noise.size() - 9000, first) == adler32_reference(noise));
}

TEST_CASE("a 1x1 gray PNG, byte by byte") {
  const std::uint8_t pixel = 0x7F;
  const std::string png = kiln::io::png_bytes(&pixel, 1, 1, 1);
  // IHDR: length 13, "IHDR", width 1, height 1, depth 8, colour type 0, methods 0, CRC-32 of
  // the 17 bytes from "IHDR" on (0x3A7E9B55, as every 1x1 8-bit gray PNG has).
  const std::string ihdr("\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00\x3a\x7e\x9b\x55", 25);
  // IDAT: the filtered row is 00 7f (filter None: every filter predicts 0 for the only pixel, and
  // ties go to the lowest type). Fixed-Huffman block, bits sent least significant first:
  // BFINAL 1, BTYPE 01 -> 1 1 0; literal 0x00 = 00110000 and literal 0x7f = 0x30 + 0x7f = 10101111
  // (8-bit codes, sent most significant first); end of block 0000000. Packed: 63 a8 07 00.
  // zlib around it: 78 9c, then Adler-32 of 00 7f: a = 1 + 0 + 0x7f = 0x80, b = 1 + 0x80 = 0x81.
  const std::string zlib("\x78\x9c\x63\xa8\x07\x00\x00\x81\x00\x80", 10);
  const std::string idat_crc_input = "IDAT" + zlib;
  std::string idat("\x00\x00\x00\x0aIDAT", 8);
  idat += zlib;
  const std::uint32_t crc = kiln::io::crc32(bytes_of(idat_crc_input.c_str()), idat_crc_input.size());
  for (int shift = 24; shift >= 0; shift -= 8) idat += static_cast<char>((crc >> shift) & 0xFF);
  const std::string iend("\x00\x00\x00\x00IEND\xae\x42\x60\x82", 12);
  CHECK(png == std::string("\x89PNG\r\n\x1a\n", 8) + ihdr + idat + iend);

  // Colour types: RGB 2, RGBA 6 (the 1x1 RGBA IHDR CRC is 0x1F15C489).
  const std::uint8_t rgba[4] = {1, 2, 3, 4};
  const std::string png4 = kiln::io::png_bytes(rgba, 1, 1, 4);
  CHECK(png4.substr(8, 25) ==
        std::string("\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89", 25));
  CHECK(kiln::io::png_bytes(rgba, 1, 1, 3)[8 + 8 + 9] == 2);
}

TEST_CASE("deflate_compress round-trips through kiln's inflate and picks the smallest block type") {
  // Empty input: one final fixed block holding only end-of-block.
  const Bytes empty_stream = kiln::io::deflate_compress(nullptr, 0);
  CHECK(empty_stream == Bytes{0x03, 0x00});
  CHECK(round_trip({}).empty());
  CHECK(round_trip({42}) == Bytes{42});

  // Random bytes do not compress: stored blocks, at most 5 bytes of overhead per 65535 bytes.
  const Bytes noise = random_bytes(150000, 1);
  const Bytes stored = kiln::io::deflate_compress(noise.data(), noise.size());
  CHECK(first_block_type(stored) == 0);
  CHECK(stored.size() <= noise.size() + 5 * ((noise.size() + 65534) / 65535 + 10));
  CHECK(round_trip(noise) == noise);

  // Long runs: one literal, then matches of 258 at distance 1. Even the fixed code takes
  // 100000 / 258 = 388 matches of 8 + 5 bits (631 bytes); the dynamic code gives the one length
  // and the one distance symbol a bit each.
  const Bytes run(100000, 'a');
  const Bytes long_matches = kiln::io::deflate_compress(run.data(), run.size());
  CHECK(long_matches.size() < 200);
  CHECK(round_trip(run) == run);

  // A short repetitive text: 7 literals and one match (length 14, distance 7) cost about 90 bits
  // with the fixed code, less than a dynamic block's header alone.
  const std::string hello = "hello, hello, hello, ";
  const Bytes short_text(hello.begin(), hello.end());
  const Bytes fixed = kiln::io::deflate_compress(short_text.data(), short_text.size());
  CHECK(first_block_type(fixed) == 1);
  CHECK(fixed.size() <= 12);
  CHECK(round_trip(short_text) == short_text);

  // Four letters at random: 2 bits of information a byte, so a dynamic code (2 bits per literal,
  // a little more with the short matches chance makes) beats the fixed one (8 bits per literal).
  std::mt19937 rng(3);
  Bytes letters(60000);
  for (auto& b : letters) b = "ACGT"[rng() % 4];
  const Bytes dynamic = kiln::io::deflate_compress(letters.data(), letters.size());
  CHECK(first_block_type(dynamic) == 2);
  CHECK(dynamic.size() < letters.size() / 3);
  CHECK(round_trip(letters) == letters);

  // A block of noise repeated: the copy is reachable only at distance 32768, the window's edge.
  Bytes twice = random_bytes(32768, 5);
  twice.insert(twice.end(), twice.begin(), twice.end());
  const Bytes far = kiln::io::deflate_compress(twice.data(), twice.size());
  CHECK(far.size() < 32768 + 2000);
  CHECK(round_trip(twice) == twice);

  // Text-like data with repeats at many distances and lengths, every block type mixed.
  Bytes mixed;
  std::mt19937 words(11);
  const char* vocabulary[] = {"kiln ", "tensor ", "gradient ", "png ", "deflate ", "huffman ", "\n", "0123456789"};
  while (mixed.size() < 300000) {
    if (words() % 50 == 0) {
      const Bytes chunk = random_bytes(500 + words() % 3000, static_cast<std::uint32_t>(mixed.size()));
      mixed.insert(mixed.end(), chunk.begin(), chunk.end());
    }
    const char* w = vocabulary[words() % 8];
    mixed.insert(mixed.end(), w, w + std::char_traits<char>::length(w));
  }
  CHECK(round_trip(mixed) == mixed);

  // The zlib wrapper: header 78 9c, the DEFLATE stream, Adler-32 big-endian.
  const Bytes z = kiln::io::zlib_compress(letters.data(), letters.size());
  CHECK(z[0] == 0x78);
  CHECK(z[1] == 0x9c);
  CHECK(Bytes(z.begin() + 2, z.end() - 4) == dynamic);
  const std::uint32_t adler = adler32_reference(letters);
  CHECK(Bytes(z.end() - 4, z.end()) == Bytes{std::uint8_t(adler >> 24), std::uint8_t(adler >> 16),
                                             std::uint8_t(adler >> 8), std::uint8_t(adler)});
}

TEST_CASE("row filters chosen by hand") {
  // Width 3, gray, two equal rows 10 20 30.
  // Row 0 (no row above): None sums 10 + 20 + 30 = 60; Sub gives 10 10 10 (30); Up = None (60);
  // Average gives 10, 20 - 5, 30 - 10 (45); Paeth predicts the left pixel when the row above is
  // zero, so it equals Sub (30). The tie goes to the lower type: Sub.
  // Row 1: Up gives 0 0 0 (sum 0), strictly best.
  const std::uint8_t pixels[6] = {10, 20, 30, 10, 20, 30};
  const Bytes rows = filtered_rows(kiln::io::png_bytes(pixels, 3, 2, 1));
  CHECK(rows == Bytes{1, 10, 10, 10, 2, 0, 0, 0});

  // A linear ramp v = x + 2y: Paeth predicts left + up - up_left exactly (0 residuals) in every row
  // but the first, where Sub gives 0 1 1 1 ... (RGB: channels filter against the same channel).
  Bytes ramp;
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 5; ++x)
      for (int k = 0; k < 3; ++k) ramp.push_back(static_cast<std::uint8_t>(10 * k + x + 2 * y));
  const Bytes ramp_rows = filtered_rows(kiln::io::png_bytes(ramp.data(), 5, 6, 3));
  for (int y = 0; y < 6; ++y) CHECK(ramp_rows[y * 16] == (y == 0 ? 1 : 4));
  CHECK(unfilter(ramp_rows, 5, 6, 3) == ramp);
}

TEST_CASE("PNGs decode exactly in Python's zlib and in kiln's inflate") {
  TempDir dir;
  std::mt19937 rng(2024);
  std::set<int> filter_types;
  struct Case {
    const char* name;
    int width, height, channels;
  };
  const Case cases[] = {{"one", 1, 1, 1}, {"odd", 3, 7, 3}, {"structured", 64, 64, 3},
                        {"wide_rgba", 300, 5, 4}, {"smooth", 37, 29, 1}, {"noise", 160, 160, 3}};
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const std::size_t n = std::size_t(c.width) * c.height * c.channels;
    Bytes pixels(n);
    const std::string name = c.name;
    for (int y = 0; y < c.height; ++y)
      for (int x = 0; x < c.width; ++x)
        for (int k = 0; k < c.channels; ++k) {
          int v = static_cast<int>(rng() >> 24);
          if (name == "structured") v = ((x / 8 + y / 8) % 2) ? 200 - 40 * k : (x * 4 + k * 50) % 256;
          if (name == "smooth") v = (x * x + 3 * y * y + x * y) / 7 + static_cast<int>(rng() % 3);
          if (name == "wide_rgba" && k == 3) v = 255;
          pixels[(std::size_t(y) * c.width + x) * c.channels + k] = static_cast<std::uint8_t>(v);
        }
    const std::string png = kiln::io::png_bytes(pixels.data(), c.width, c.height, c.channels);
    CHECK(python_check(dir, c.name, png, pixels, c.width, c.height, c.channels) == 0);
    CHECK(unfilter(filtered_rows(png), c.width, c.height, c.channels, &filter_types) == pixels);
    if (name == "structured") CHECK(png.size() < n / 8);  // LZ77 matches the repeated squares
    if (name == "noise") CHECK(parse_chunks(png).size() == 4);  // 76800 bytes: two IDAT chunks
  }
  // Every filter type was chosen somewhere, so each has been un-filtered by Python.
  CHECK(filter_types == std::set<int>{0, 1, 2, 3, 4});
}

TEST_CASE("a constant 256x256 image compresses below 2 KB") {
  const Bytes gray(256 * 256, 77);
  const std::string png = kiln::io::png_bytes(gray.data(), 256, 256, 1);
  CHECK(png.size() < 2048);
  CHECK(unfilter(filtered_rows(png), 256, 256, 1) == gray);
  const Bytes rgb(256 * 256 * 3, 200);
  CHECK(kiln::io::png_bytes(rgb.data(), 256, 256, 3).size() < 2048);
}

TEST_CASE("png_bytes rejects bad arguments, naming the values") {
  const std::uint8_t pixel[4] = {};
  CHECK(value_error_of([&] { kiln::io::png_bytes(pixel, 0, 1, 1); }).find("width 0, height 1") != std::string::npos);
  CHECK(value_error_of([&] { kiln::io::png_bytes(pixel, 1, -3, 1); }).find("height -3") != std::string::npos);
  const std::string channels = value_error_of([&] { kiln::io::png_bytes(pixel, 1, 1, 2); });
  CHECK(channels.find("channels must be 1 (gray), 3 (RGB) or 4 (RGBA)") != std::string::npos);
  CHECK(channels.find("channels 2") != std::string::npos);
  // (1 + 4 (2^31 - 1)) (2^31 - 1) bytes is more than 2^63 - 1: refused before reading a pixel.
  const std::string huge = value_error_of([&] { kiln::io::png_bytes(pixel, INT_MAX, INT_MAX, 4); });
  CHECK(huge.find("overflow") != std::string::npos);
  CHECK(huge.find("width 2147483647, height 2147483647, channels 4") != std::string::npos);
  CHECK(value_error_of([&] { kiln::io::png_bytes(nullptr, 2, 2, 1); }).find("null") != std::string::npos);
  kiln::io::Image short_image{2, 2, 3, Bytes(11)};
  CHECK(value_error_of([&] { kiln::io::png_bytes(short_image); }).find("needs 12 bytes of pixels, got 11") !=
        std::string::npos);
}

TEST_CASE("write_png writes the PNG atomically") {
  TempDir dir;
  const Bytes pixels = random_bytes(5 * 4 * 3, 9);
  const auto path = dir.path / "image.png";
  kiln::io::write_png(path, pixels.data(), 5, 4, 3);
  CHECK(read_bytes(path) == kiln::io::png_bytes(pixels.data(), 5, 4, 3));
  CHECK(!std::filesystem::exists(path.string() + ".tmp"));
  const kiln::io::Image image{5, 4, 3, pixels};
  kiln::io::write_png(dir.path / "image2.png", image);
  CHECK(read_bytes(dir.path / "image2.png") == read_bytes(path));
  CHECK_THROWS_AS(kiln::io::write_png(dir.path / "missing" / "x.png", image), kiln::io::FileError);
}

TEST_CASE("image_grid lays out [N, C, H, W] images, values mapped from [lo, hi] to bytes") {
  // Two 1x2x2 images, 2 columns, padding 1 of value 9: width 2 (2 + 1) + 1 = 7, height 4.
  // Bytes: round(255 v) clamped: 0 -> 0, 0.5 -> 127.5 -> 128, 1 -> 255, 0.25 -> 63.75 -> 64,
  // -1 -> 0, 2 -> 255, 0.2f -> 51.0000008 -> 51, 0.1f -> 25.50000038 -> 26.
  const auto images = kiln::from_vector<float>({0.f, 0.5f, 1.f, 0.25f, -1.f, 2.f, 0.2f, 0.1f}, {2, 1, 2, 2});
  const kiln::io::Image grid = kiln::io::image_grid(images, 2, 1, 0.0, 1.0, 9);
  CHECK(grid.width == 7);
  CHECK(grid.height == 4);
  CHECK(grid.channels == 1);
  CHECK(grid.pixels == Bytes{9, 9, 9,   9, 9, 9,   9,   //
                             9, 0, 128, 9, 0, 255, 9,   //
                             9, 255, 64, 9, 51, 26, 9,  //
                             9, 9, 9,   9, 9, 9,   9});

  // Range [-1, 1]: v -> (v + 1) 127.5.  One column: the images stack vertically, no padding.
  const kiln::io::Image stacked = kiln::io::image_grid(images, 1, 0, -1.0, 1.0);
  CHECK(stacked.width == 2);
  CHECK(stacked.height == 4);
  CHECK(stacked.pixels == Bytes{128, 191, 255, 159, 0, 255, 153, 140});

  // Three RGB 1x1 images in 2 columns: the fourth cell stays padding; channels interleave.
  const auto rgb = kiln::from_vector<double>({1, 0, 0, 0, 1, 0, 0, 0, 1}, {3, 3, 1, 1});
  const kiln::io::Image cells = kiln::io::image_grid(rgb, 2, 1);
  CHECK(cells.width == 5);
  CHECK(cells.height == 5);
  CHECK(cells.channels == 3);
  auto at = [&](int x, int y) {
    const std::size_t i = (std::size_t(y) * cells.width + x) * 3;
    return Bytes{cells.pixels[i], cells.pixels[i + 1], cells.pixels[i + 2]};
  };
  CHECK(at(1, 1) == Bytes{255, 0, 0});
  CHECK(at(3, 1) == Bytes{0, 255, 0});
  CHECK(at(1, 3) == Bytes{0, 0, 255});
  CHECK(at(3, 3) == Bytes{0, 0, 0});
  CHECK(at(2, 1) == Bytes{0, 0, 0});

  // A strided view (H and W swapped) is read through its strides: with [lo, hi] = [0, 255]
  // integers map to themselves, so the cells hold the transposed images.
  const auto base = kiln::from_vector<int>({1, 2, 3, 4, 5, 6, 7, 8}, {2, 1, 2, 2});
  const auto transposed = base.transpose(2, 3);
  CHECK(!transposed.is_contiguous());
  CHECK(kiln::io::image_grid(transposed, 2, 0, 0.0, 255.0).pixels == Bytes{1, 3, 5, 7, 2, 4, 6, 8});

  // The grid feeds write_png / png_bytes directly.
  CHECK(unfilter(filtered_rows(kiln::io::png_bytes(grid)), 7, 4, 1) == grid.pixels);
}

TEST_CASE("image_grid errors name the shape or the value") {
  auto shape_error_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const kiln::ShapeError& e) {
      return e.what();
    }
    return "";
  };
  const auto three_d = kiln::zeros<float>({2, 4, 4});
  CHECK(shape_error_of([&] { kiln::io::image_grid(three_d, 2); }).find("[2, 4, 4]") != std::string::npos);
  const auto two_channels = kiln::zeros<float>({2, 2, 2, 2});
  const std::string channels = shape_error_of([&] { kiln::io::image_grid(two_channels, 2); });
  CHECK(channels.find("[2, 2, 2, 2]") != std::string::npos);
  CHECK(channels.find("channels") != std::string::npos);
  const auto ok = kiln::zeros<float>({2, 1, 2, 2});
  CHECK(value_error_of([&] { kiln::io::image_grid(ok, 0); }).find("columns must be at least 1, got 0") !=
        std::string::npos);
  CHECK(value_error_of([&] { kiln::io::image_grid(ok, 2, -1); }).find("padding") != std::string::npos);
  CHECK(value_error_of([&] { kiln::io::image_grid(ok, 2, 2, 1.0, 1.0); }).find("lo < hi") != std::string::npos);
}
