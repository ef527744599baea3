// Tests of include/kiln/io/png_read.hpp: PNGs assembled here byte by byte (stored zlib blocks, each
// row filter, 1/2/4/16-bit samples, palettes with transparency, gray+alpha) decode to pixels
// worked out by hand; kiln's own writer round-trips through the reader; every kind of damage gives
// a FormatError naming the problem; random corruptions of a valid file decode or throw kiln::Error
// and never crash.
#include <doctest/doctest.h>
#include <kiln/io/png.hpp>
#include <kiln/io/png_read.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using Bytes = std::vector<std::uint8_t>;

void put_be32(std::string& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xff));
}

// A chunk with its CRC computed here from the CRC-32 definition (bitwise, polynomial 0xEDB88320).
std::string chunk(const std::string& type, const Bytes& body) {
  std::string out;
  put_be32(out, static_cast<std::uint32_t>(body.size()));
  std::string crc_input = type + std::string(body.begin(), body.end());
  std::uint32_t crc = 0xffffffffu;
  for (unsigned char c : crc_input) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  out += crc_input;
  put_be32(out, crc ^ 0xffffffffu);
  return out;
}

// zlib stream with one stored DEFLATE block (RFC 1950/1951) and the Adler-32 by definition.
Bytes zlib_stored(const Bytes& data) {
  Bytes out = {0x78, 0x01, 0x01};  // CMF, FLG (0x7801 % 31 == 0), BFINAL=1 BTYPE=00
  const auto n = static_cast<std::uint16_t>(data.size());
  out.push_back(static_cast<std::uint8_t>(n & 0xff));
  out.push_back(static_cast<std::uint8_t>(n >> 8));
  out.push_back(static_cast<std::uint8_t>(~n & 0xff));
  out.push_back(static_cast<std::uint8_t>((~n >> 8) & 0xff));
  out.insert(out.end(), data.begin(), data.end());
  std::uint32_t a = 1, b = 0;
  for (std::uint8_t c : data) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  const std::uint32_t adler = (b << 16) | a;
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>((adler >> s) & 0xff));
  return out;
}

Bytes ihdr(std::uint32_t w, std::uint32_t h, int depth, int colour, int interlace = 0) {
  std::string s;
  put_be32(s, w);
  put_be32(s, h);
  Bytes out(s.begin(), s.end());
  out.push_back(static_cast<std::uint8_t>(depth));
  out.push_back(static_cast<std::uint8_t>(colour));
  out.push_back(0);
  out.push_back(0);
  out.push_back(static_cast<std::uint8_t>(interlace));
  return out;
}

const std::string signature("\x89PNG\r\n\x1a\n", 8);

std::string png(const Bytes& header, const Bytes& filtered_rows, const std::string& extra_before_idat = "") {
  return signature + chunk("IHDR", header) + extra_before_idat + chunk("IDAT", zlib_stored(filtered_rows)) +
         chunk("IEND", {});
}

kiln::io::Image decode(const std::string& file) { return kiln::io::decode_png(file, "test.png"); }

std::string error_of(const std::string& file) {
  try {
    decode(file);
  } catch (const kiln::io::FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("8-bit gray with each row filter, undone by hand") {
  // 3x5 image; rows use filters None, Sub, Up, Average, Paeth. Target pixels:
  //   row0 10 20 30 | row1 40 50 60 | row2 41 52 63 | row3 0 100 200 | row4 5 10 250
  // Filtered bytes (computed by hand from the definitions, mod 256):
  //   Sub   row1: 40, 50-40=10, 60-50=10
  //   Up    row2: 41-40=1, 52-50=2, 63-60=3
  //   Avg   row3: 0-floor((0+41)/2)=-20=236, 100-floor((0+52)/2)=74, 200-floor((100+63)/2)=119
  //   Paeth row4: x0: a=0,b=0,c=0 → pred 0 → 5; x1: a=5,b=100,c=0: p=105, |p-a|=100,|p-b|=5,|p-c|=105 → b=100,
  //               10-100=-90=166; x2: a=10,b=200,c=100: p=110, |p-a|=100,|p-b|=90,|p-c|=10 → c=100, 250-100=150
  const Bytes rows = {0, 10, 20, 30, 1, 40, 10, 10, 2, 1, 2, 3, 3, 236, 74, 119, 4, 5, 166, 150};
  const auto image = decode(png(ihdr(3, 5, 8, 0), rows));
  CHECK(image.width == 3);
  CHECK(image.height == 5);
  CHECK(image.channels == 1);
  CHECK(image.pixels == Bytes{10, 20, 30, 40, 50, 60, 41, 52, 63, 0, 100, 200, 5, 10, 250});
}

TEST_CASE("1-, 2- and 4-bit gray scale to 0..255") {
  // 1-bit, 10 pixels wide: bits 1011001110 then 6 padding bits → bytes 0b10110011, 0b10000000.
  auto one = decode(png(ihdr(10, 1, 1, 0), {0, 0xb3, 0x80}));
  CHECK(one.pixels == Bytes{255, 0, 255, 255, 0, 0, 255, 255, 255, 0});
  // 2-bit: values 0,1,2,3 → 0, 85, 170, 255 (v * 255 / 3); byte 0b00011011.
  auto two = decode(png(ihdr(4, 1, 2, 0), {0, 0x1b}));
  CHECK(two.pixels == Bytes{0, 85, 170, 255});
  // 4-bit: 0xF0 0x7 → 255, 0, 119 (7 * 17); the Sub filter on packed rows works on whole bytes.
  auto four = decode(png(ihdr(3, 1, 4, 0), {1, 0xf0, 0x70 - 0xf0 + 256}));
  CHECK(four.pixels == Bytes{255, 0, 119});
}

TEST_CASE("palette with transparency, gray+alpha and 16-bit RGB") {
  // 2-bit palette of 3 colours, the second half transparent: pixels 2, 0, 1.
  const Bytes plte = {255, 0, 0, 0, 255, 0, 0, 0, 255};
  const std::string extra = chunk("PLTE", plte) + chunk("tRNS", {255, 128});
  auto pal = decode(png(ihdr(3, 1, 2, 3), {0, 0x84}, extra));  // 10 00 01 00
  CHECK(pal.channels == 4);
  CHECK(pal.pixels == Bytes{0, 0, 255, 255, 255, 0, 0, 255, 0, 255, 0, 128});
  // Index 3 is past the 3-entry palette.
  CHECK(error_of(png(ihdr(1, 1, 2, 3), {0, 0xc0}, extra)).find("palette index 3") != std::string::npos);

  auto ga = decode(png(ihdr(2, 1, 8, 4), {0, 7, 200, 9, 100}));
  CHECK(ga.channels == 4);
  CHECK(ga.pixels == Bytes{7, 7, 7, 200, 9, 9, 9, 100});

  // 16-bit RGB, 1 pixel per row, filter Sub unit = 6 bytes (so x < 6 has no left neighbour).
  auto rgb16 = decode(png(ihdr(1, 2, 16, 2), {0, 0x12, 0x34, 0xab, 0xcd, 0xff, 0x00, 2, 1, 0, 1, 0, 0, 0}));
  CHECK(rgb16.channels == 3);
  CHECK(rgb16.pixels == Bytes{0x12, 0xab, 0xff, 0x13, 0xac, 0xff});
}

TEST_CASE("kiln's writer round-trips through the reader") {
  std::mt19937 gen(7);
  for (int channels : {1, 3, 4}) {
    for (auto [w, h] : {std::pair{1, 1}, std::pair{5, 3}, std::pair{64, 40}, std::pair{300, 7}}) {
      kiln::io::Image image;
      image.width = w;
      image.height = h;
      image.channels = channels;
      image.pixels.resize(std::size_t(w) * std::size_t(h) * std::size_t(channels));
      // Smooth gradients plus noise, so the writer picks several filters and LZ77 matches.
      for (std::size_t i = 0; i < image.pixels.size(); ++i)
        image.pixels[i] = static_cast<std::uint8_t>((i / std::size_t(channels)) % 97 + (gen() % 4));
      const auto back = kiln::io::decode_png(kiln::io::png_bytes(image));
      CHECK(back.width == w);
      CHECK(back.height == h);
      CHECK(back.channels == channels);
      CHECK(back.pixels == image.pixels);
    }
  }
}

TEST_CASE("read_png reads a file and names it in errors") {
  const auto dir = std::filesystem::temp_directory_path() / ("kiln_png_read_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  kiln::io::Image image{2, 2, 1, {0, 64, 128, 255}};
  kiln::io::write_png(dir / "a.png", image);
  CHECK(kiln::io::read_png((dir / "a.png").string()).pixels == image.pixels);
  {
    std::ofstream bad(dir / "b.png", std::ios::binary);
    bad << "GIF89a....";
  }
  try {
    kiln::io::read_png((dir / "b.png").string());
    FAIL("no error");
  } catch (const kiln::io::FormatError& e) {
    CHECK(std::string(e.what()).find("b.png") != std::string::npos);
    CHECK(std::string(e.what()).find("signature") != std::string::npos);
  }
  CHECK_THROWS_AS(kiln::io::read_png((dir / "missing.png").string()), kiln::Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("damaged files give errors that name the problem") {
  const Bytes rows = {0, 1, 2, 3};
  const std::string good = png(ihdr(3, 1, 8, 0), rows);
  REQUIRE(decode(good).pixels == Bytes{1, 2, 3});

  CHECK(error_of("\x89PNX\r\n\x1a\n" + good.substr(8)).find("signature") != std::string::npos);
  std::string crc = good;
  crc[8 + 8 + 2] ^= 1;  // a byte inside IHDR's data
  CHECK(error_of(crc).find("CRC mismatch in chunk IHDR") != std::string::npos);
  CHECK(error_of(good.substr(0, good.size() - 12)).find("no IEND") != std::string::npos);
  CHECK(error_of(good.substr(0, 50)).find("past the end") != std::string::npos);
  CHECK(error_of(signature + chunk("IDAT", zlib_stored(rows))).find("not IHDR") != std::string::npos);
  CHECK(error_of(png(ihdr(3, 1, 8, 0, 1), rows)).find("interlaced") != std::string::npos);
  CHECK(error_of(png(ihdr(3, 1, 3, 0), rows)).find("bit depth 3") != std::string::npos);
  CHECK(error_of(png(ihdr(3, 1, 8, 2), rows)).find("decompresses to 4 bytes") != std::string::npos);
  CHECK(error_of(png(ihdr(0, 1, 8, 0), rows)).find("image size 0x1") != std::string::npos);
  CHECK(error_of(png(ihdr(3, 1, 8, 0), {5, 1, 2, 3})).find("filter type 5") != std::string::npos);
  CHECK(error_of(png(ihdr(3, 1, 8, 3), rows)).find("without a PLTE") != std::string::npos);
  CHECK(error_of(png(ihdr(3, 1, 8, 0), rows, chunk("ABCD", {}))).find("critical chunk ABCD") != std::string::npos);
  // Adler-32 damaged: rebuild the IDAT with its last byte changed.
  Bytes z = zlib_stored(rows);
  z.back() ^= 0xff;
  CHECK(error_of(signature + chunk("IHDR", ihdr(3, 1, 8, 0)) + chunk("IDAT", z) + chunk("IEND", {})).find("Adler-32") !=
        std::string::npos);
  // A huge declared size is refused before anything is allocated for it.
  CHECK(error_of(png(ihdr(1u << 30, 1u << 30, 8, 6), rows)).find("decodes to more than") != std::string::npos);
}

TEST_CASE("random corruptions decode or throw kiln::Error, never crash") {
  kiln::io::Image image{17, 9, 3, {}};
  image.pixels.resize(17 * 9 * 3);
  for (std::size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<std::uint8_t>(i * 7 % 251);
  const std::string good = kiln::io::png_bytes(image);
  std::mt19937 gen(12345);
  int decoded = 0, refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string file = good;
    const int edits = 1 + static_cast<int>(gen() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = gen() % file.size();
      switch (gen() % 3) {
        case 0: file[at] = static_cast<char>(gen()); break;
        case 1: file.resize(at); break;
        default: file.insert(at, 1, static_cast<char>(gen())); break;
      }
      if (file.empty()) file = "x";
    }
    try {
      const auto out = kiln::io::decode_png(file, "fuzz.png", 1 << 20);
      CHECK(out.pixels.size() == std::size_t(out.width) * std::size_t(out.height) * std::size_t(out.channels));
      ++decoded;
    } catch (const kiln::Error&) {
      ++refused;
    }
  }
  CHECK(decoded + refused == 3000);
  CHECK(refused > 2500);  // nearly every edit breaks a CRC
}
