// Tests of include/kiln/io/gzip.hpp: streams made by Python's zlib and gzip modules (stored,
// fixed and dynamic Huffman blocks, every header flag, two members), streams built bit by bit
// here for each error, round trips through the system's gzip, truncation at every offset, CRC
// and ISIZE checks, the max_output bound, and a seeded fuzz loop of corrupted streams.
#include <doctest/doctest.h>
#include <kiln/io/gzip.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using Bytes = std::vector<std::uint8_t>;

std::string text_of(const Bytes& b) { return std::string(b.begin(), b.end()); }

// The message of the kiln::io::FormatError `f` throws ("" when it throws nothing).
std::string format_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kiln::io::FormatError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Writes DEFLATE bits: header fields least-significant bit first, Huffman codes most-significant
// bit first (RFC 1951, 3.1.1).
struct BitWriter {
  Bytes bytes;
  unsigned used = 0;  // bits used in the last byte
  void bit(unsigned b) {
    if (used == 0) bytes.push_back(0);
    bytes.back() = static_cast<std::uint8_t>(bytes.back() | (b << used));
    used = (used + 1) % 8;
  }
  void bits(unsigned value, unsigned n) {
    for (unsigned i = 0; i < n; ++i) bit((value >> i) & 1u);
  }
  void code(unsigned value, unsigned n) {
    for (unsigned i = n; i-- > 0;) bit((value >> i) & 1u);
  }
  // A literal/length symbol in the fixed code of RFC 1951, 3.2.6.
  void fixed(unsigned s) {
    if (s < 144) code(0x30 + s, 8);
    else if (s < 256) code(0x190 + s - 144, 9);
    else if (s < 280) code(s - 256, 7);
    else code(0xC0 + s - 280, 8);
  }
};

// Bitwise CRC-32 (RFC 1952, section 8, one bit at a time), the reference for the table version.
std::uint32_t crc32_bitwise(const std::uint8_t* p, std::size_t n) {
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
  }
  return ~c;
}

// zlib.compressobj(0, DEFLATED, -15) of "kiln stores this block as is.": one stored block,
// header byte 01 (BFINAL 1, BTYPE 00), LEN 0x001d = 29, NLEN 0xffe2, then the 29 bytes.
const Bytes stored_stream = {0x01, 0x1d, 0x00, 0xe2, 0xff, 0x6b, 0x69, 0x6c, 0x6e, 0x20, 0x73, 0x74,
                             0x6f, 0x72, 0x65, 0x73, 0x20, 0x74, 0x68, 0x69, 0x73, 0x20, 0x62, 0x6c,
                             0x6f, 0x63, 0x6b, 0x20, 0x61, 0x73, 0x20, 0x69, 0x73, 0x2e};

// zlib level 9 of "Fashion-MNIST, Fashion-MNIST, Fashion-MNIST!": one fixed-Huffman block
// (0x73 = 0111 0011: BFINAL 1, BTYPE 01) with an overlapping back-reference.
const Bytes fixed_stream = {0x73, 0x4b, 0x2c, 0xce, 0xc8, 0xcc, 0xcf, 0xd3, 0xf5, 0xf5, 0xf3,
                            0x0c, 0x0e, 0xd1, 0x51, 0x70, 0xc3, 0xc3, 0x55, 0x04, 0x00};

const char* dynamic_text =
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season "
    "of Light, it was the season of Darkness.";

// zlib level 9 of dynamic_text: one dynamic-Huffman block (0x75 = 0111 0101: BFINAL 1, BTYPE 10).
const Bytes dynamic_stream = {
    0x75, 0xcd, 0xc1, 0x09, 0x80, 0x30, 0x10, 0x44, 0xd1, 0x56, 0xb6, 0x00, 0xb1, 0x0a, 0x2f, 0x82,
    0x4d, 0x24, 0x3a, 0x31, 0x8b, 0x31, 0x2b, 0xd9, 0x95, 0x60, 0xf7, 0x92, 0x93, 0x08, 0x7a, 0x7e,
    0x7f, 0x98, 0xd1, 0xa8, 0x3a, 0x25, 0x8b, 0x20, 0x0f, 0x35, 0x92, 0x40, 0xc6, 0x3b, 0xb4, 0x23,
    0x7e, 0xa4, 0x4a, 0xf9, 0x23, 0xb7, 0xa2, 0x41, 0x65, 0x5d, 0x64, 0xff, 0x92, 0x20, 0x92, 0x58,
    0x63, 0x86, 0xbe, 0x87, 0x38, 0x64, 0x8e, 0x2d, 0xf0, 0x48, 0x8c, 0xf0, 0x6d, 0x9c, 0xe7, 0x82,
    0xe5, 0x4c, 0x6c, 0xd7, 0x2b, 0x50, 0x38, 0x95, 0xdc, 0x8a, 0x89, 0xd7, 0x68, 0x3f, 0x36, 0xb8,
    0xb2, 0xb5, 0xdf, 0xfe, 0x06};

// Two gzip members. The first (109 bytes, built in Python) sets every flag: FLG 0x1f = FTEXT |
// FHCRC | FEXTRA | FNAME | FCOMMENT, MTIME 1600000000, XFL 2, OS 3, XLEN 8 ("KL", 4, "kiln"),
// FNAME "flags.txt", FCOMMENT "a comment", CRC16 0x4a34 = low half of zlib.crc32(header);
// CRC-32 0x2a522a1b and ISIZE 63 of member_one_text. The second (34 bytes) is
// gzip.compress(b"second member\n", mtime=0).
const char* member_one_text = "Every gzip header flag: FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT.\n";
const char* member_two_text = "second member\n";
constexpr std::size_t member_one_size = 109;
const Bytes two_members = {
    0x1f, 0x8b, 0x08, 0x1f, 0x00, 0x10, 0x5e, 0x5f, 0x02, 0x03, 0x08, 0x00, 0x4b, 0x4c, 0x04, 0x00,
    0x6b, 0x69, 0x6c, 0x6e, 0x66, 0x6c, 0x61, 0x67, 0x73, 0x2e, 0x74, 0x78, 0x74, 0x00, 0x61, 0x20,
    0x63, 0x6f, 0x6d, 0x6d, 0x65, 0x6e, 0x74, 0x00, 0x34, 0x4a, 0x73, 0x2d, 0x4b, 0x2d, 0xaa, 0x54,
    0x48, 0xaf, 0xca, 0x2c, 0x50, 0xc8, 0x48, 0x4d, 0x4c, 0x49, 0x2d, 0x52, 0x48, 0xcb, 0x49, 0x4c,
    0xb7, 0x52, 0x70, 0x0b, 0x71, 0x8d, 0x08, 0xd1, 0x51, 0x70, 0xf3, 0x70, 0x0e, 0x72, 0x06, 0x52,
    0x40, 0x4e, 0x90, 0x23, 0x90, 0xf6, 0x73, 0xf4, 0x75, 0x05, 0x52, 0xce, 0xfe, 0xbe, 0xbe, 0xae,
    0x7e, 0x21, 0x7a, 0x5c, 0x00, 0x1b, 0x2a, 0x52, 0x2a, 0x3f, 0x00, 0x00, 0x00, 0x1f, 0x8b, 0x08,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x2b, 0x4e, 0x4d, 0xce, 0xcf, 0x4b, 0x51, 0xc8, 0x4d,
    0xcd, 0x4d, 0x4a, 0x2d, 0xe2, 0x02, 0x00, 0x36, 0x18, 0x4b, 0x0e, 0x0e, 0x00, 0x00, 0x00};

Bytes inflate_all(const Bytes& b, std::size_t max_output = 1 << 20) {
  return kiln::io::inflate(b.data(), b.size(), max_output);
}
Bytes gunzip_all(const Bytes& b, std::size_t max_output = 1 << 20, const std::string& name = {}) {
  return kiln::io::gunzip(b.data(), b.size(), max_output, name);
}

// A dynamic block whose literal/length code is {'a': "0", 256: "10", 257: "11"} and whose distance
// code is the single code {0: "0"} (an incomplete code, allowed by RFC 1951, 3.2.7): then
// 'a', length 3 (symbol 257), distance code bit `distance_bit`, end of block. With bit 0 it
// decodes to "aaaa"; with bit 1 the distance code is invalid.
Bytes single_distance_code_block(unsigned distance_bit) {
  BitWriter w;
  w.bits(1, 1);   // BFINAL
  w.bits(2, 2);   // BTYPE 10
  w.bits(1, 5);   // HLIT = 258 - 257
  w.bits(0, 5);   // HDIST = 1 - 1
  w.bits(14, 4);  // HCLEN = 18 - 4: code-length code lengths in the order 16 17 18 0 8 7 9 6 10 5
                  // 11 4 12 3 13 2 14 1
  const unsigned order_lengths[18] = {0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1};
  for (unsigned l : order_lengths) w.bits(l, 3);
  // Code-length code: 1 -> "0", 2 -> "10", 18 -> "11" (canonical: shorter first, then by symbol).
  w.code(3, 2), w.bits(97 - 11, 7);   // 97 zeros (symbols 0..96)
  w.code(0, 1);                       // 'a' (97): length 1
  w.code(3, 2), w.bits(138 - 11, 7);  // 138 zeros (98..235)
  w.code(3, 2), w.bits(20 - 11, 7);   // 20 zeros (236..255)
  w.code(2, 2);                       // 256: length 2
  w.code(2, 2);                       // 257: length 2
  w.code(0, 1);                       // distance 0: length 1
  w.code(0, 1);                       // literal 'a'
  w.code(3, 2);                       // 257: length 3
  w.code(distance_bit, 1);            // distance symbol 0: distance 1
  w.code(2, 2);                       // end of block
  return w.bytes;
}

// A dynamic block header: HLIT 257, HDIST 1, code-length code {1: "0", 18: "1"}, followed by
// the given code-length symbols (pairs of code bit and 7 extra bits for 18).
Bytes dynamic_header_with_lengths(const std::vector<std::pair<unsigned, unsigned>>& symbols) {
  BitWriter w;
  w.bits(1, 1), w.bits(2, 2);
  w.bits(0, 5), w.bits(0, 5), w.bits(14, 4);
  const unsigned order_lengths[18] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  for (unsigned l : order_lengths) w.bits(l, 3);
  for (auto [symbol, extra] : symbols) {
    if (symbol == 1) {
      w.code(0, 1);
    } else {
      w.code(1, 1);
      w.bits(extra - 11, 7);
    }
  }
  w.bits(0, 16);  // padding, so the failure is not a truncation
  return w.bytes;
}

std::filesystem::path scratch_dir() {
  auto dir = std::filesystem::temp_directory_path() /
             ("kiln_test_io_gzip_" + std::to_string(static_cast<long>(::getpid())));
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

}  // namespace

TEST_CASE("crc32 matches the check value and a bitwise reference") {
  const std::string check = "123456789";
  CHECK(kiln::io::crc32(reinterpret_cast<const std::uint8_t*>(check.data()), check.size()) ==
        0xCBF43926u);
  CHECK(kiln::io::crc32(nullptr, 0) == 0u);
  std::mt19937 gen(7);
  Bytes data(1000);
  for (auto& b : data) b = static_cast<std::uint8_t>(gen());
  for (std::size_t n : {1u, 7u, 8u, 9u, 15u, 16u, 17u, 100u, 1000u}) {
    CHECK(kiln::io::crc32(data.data(), n) == crc32_bitwise(data.data(), n));
    // Continuing from a prefix's CRC gives the CRC of the whole.
    const std::uint32_t head = kiln::io::crc32(data.data(), n / 3);
    CHECK(kiln::io::crc32(data.data() + n / 3, n - n / 3, head) == crc32_bitwise(data.data(), n));
  }
}

TEST_CASE("a stored block decodes to its bytes") {
  CHECK(text_of(inflate_all(stored_stream)) == "kiln stores this block as is.");
  Bytes bad = stored_stream;
  bad[3] ^= 0x01;  // NLEN no longer the complement of LEN
  CHECK(format_error_of([&] { inflate_all(bad); }) ==
        "kiln::inflate: offset 1: stored block length 29 does not match its one's complement NLEN "
        "65507");
}

TEST_CASE("fixed-Huffman blocks decode, by hand and from zlib") {
  // "a" at level 9 is 4b 04 00. Least-significant bit first: 0x4b = 0100 1011 gives BFINAL 1,
  // BTYPE 01 (fixed), then the 8-bit code of 'a' (0x61 + 0x30 = 1001 0001, most-significant bit
  // first) from bits 3..7 of 0x4b (1, 0, 0, 1, 0) and bits 0..2 of 0x04 (0, 0, 1); then the
  // 7-bit end-of-block code 000 0000 from the rest of 0x04 and two bits of 0x00.
  CHECK(text_of(inflate_all({0x4b, 0x04, 0x00})) == "a");
  CHECK(text_of(inflate_all(fixed_stream)) == "Fashion-MNIST, Fashion-MNIST, Fashion-MNIST!");

  // The same code, written here: 'k', 'i', then length 10 at distance 2 (overlapping).
  BitWriter w;
  w.bits(1, 1), w.bits(1, 2);
  w.fixed('k'), w.fixed('i');
  w.fixed(264);               // length 10 (symbol 264, no extra bits)
  w.code(1, 5);               // distance 2 (distance symbol 1, no extra bits)
  w.fixed(256);
  CHECK(text_of(inflate_all(w.bytes)) == "kikikikikiki");
}

TEST_CASE("a dynamic-Huffman block decodes") {
  CHECK(((dynamic_stream[0] >> 1) & 3) == 2);
  CHECK(text_of(inflate_all(dynamic_stream)) == dynamic_text);
  CHECK(text_of(inflate_all(single_distance_code_block(0))) == "aaaa");
}

TEST_CASE("every gzip header flag and two members") {
  CHECK(text_of(gunzip_all(two_members)) == std::string(member_one_text) + member_two_text);
  // The first member alone is a whole gzip file.
  const Bytes first(two_members.begin(), two_members.begin() + member_one_size);
  CHECK(text_of(gunzip_all(first)) == member_one_text);
  // Zero bytes after the last member are padding; other bytes are an error.
  Bytes padded = two_members;
  padded.insert(padded.end(), 5, 0);
  CHECK(text_of(gunzip_all(padded)) == std::string(member_one_text) + member_two_text);
  Bytes garbage = two_members;
  garbage.push_back('x');
  CHECK(format_error_of([&] { gunzip_all(garbage, 1 << 20, "g.gz"); }) ==
        "kiln::gunzip: g.gz: offset 143: expected another gzip member (1f 8b) or the end of the "
        "data after member 2, found 78");
  padded.push_back(1);
  CHECK(format_error_of([&] { gunzip_all(padded); }) ==
        "kiln::gunzip: offset 148: non-zero byte after the zero padding that follows member 2");
}

TEST_CASE("gzip header errors name the file and the offset") {
  Bytes b = two_members;
  b[40] ^= 0xff;  // the stored header CRC16
  CHECK(contains(format_error_of([&] { gunzip_all(b, 1 << 20, "h.gz"); }),
                 "kiln::gunzip: h.gz: offset 40: header CRC-16 mismatch"));
  b = two_members;
  b[0] = 0x1e;
  CHECK(format_error_of([&] { gunzip_all(b, 1 << 20, "h.gz"); }) ==
        "kiln::gunzip: h.gz: offset 0: expected the gzip magic bytes 1f 8b, found 1e 8b");
  b = two_members;
  b[2] = 7;
  CHECK(format_error_of([&] { gunzip_all(b); }) ==
        "kiln::gunzip: offset 2: compression method 7 (expected 8, deflate)");
  b = two_members;
  b[3] |= 0x80;
  CHECK(contains(format_error_of([&] { gunzip_all(b); }), "offset 3: reserved header flag bits"));
  CHECK(contains(format_error_of([&] { gunzip_all({}); }),
                 "offset 0: unexpected end of data in the gzip header"));
}

TEST_CASE("CRC-32 and ISIZE mismatches are caught") {
  // Member one's trailer sits at 101..108: CRC-32 (1b 2a 52 2a), ISIZE (3f 00 00 00).
  Bytes b = two_members;
  b[101] ^= 0x01;
  CHECK(format_error_of([&] { gunzip_all(b, 1 << 20, "c.gz"); }) ==
        "kiln::gunzip: c.gz: offset 101: CRC-32 mismatch: stored 0x2a522a1a, computed 0x2a522a1b "
        "over the decoded member");
  b = two_members;
  b[105] = 0x40;
  CHECK(format_error_of([&] { gunzip_all(b, 1 << 20, "c.gz"); }) ==
        "kiln::gunzip: c.gz: offset 105: ISIZE mismatch: stored 64, decoded 63 bytes (modulo 2^32)");
  // The second member's CRC, covering only its own bytes.
  b = two_members;
  b[135] ^= 0x80;
  CHECK(contains(format_error_of([&] { gunzip_all(b); }), "offset 135: CRC-32 mismatch"));
}

TEST_CASE("DEFLATE errors built bit by bit") {
  // Fixed block with length symbol 286 (code 1100 0110): bits 1, 1 0, then the code.
  CHECK(format_error_of([] { inflate_all({0x1b, 0x03}); }) ==
        "kiln::inflate: offset 0: invalid length symbol 286 (expected 257 to 285)");
  {  // Block type 3 inside a gzip member: the offset counts from the start of the file.
    Bytes b = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0x07, 0, 0, 0, 0, 0, 0, 0, 0};
    CHECK(format_error_of([&] { gunzip_all(b, 1 << 20, "t.gz"); }) ==
          "kiln::gunzip: t.gz: offset 10: invalid block type 3 (expected 0 stored, 1 fixed or 2 "
          "dynamic Huffman)");
  }
  {  // A back-reference before the first byte.
    BitWriter w;
    w.bits(1, 1), w.bits(1, 2), w.fixed('a'), w.fixed(257), w.code(1, 5), w.fixed(256);
    CHECK(format_error_of([&] { inflate_all(w.bytes); }) ==
          "kiln::inflate: offset 1: distance 2 reaches before the start of the output (1 bytes "
          "written)");
  }
  {  // Distance symbol 30 exists in the fixed code but is invalid.
    BitWriter w;
    w.bits(1, 1), w.bits(1, 2), w.fixed('a'), w.fixed(257), w.code(30, 5), w.fixed(256);
    CHECK(contains(format_error_of([&] { inflate_all(w.bytes); }), "invalid distance symbol 30"));
  }
  // The single distance code "0" leaves "1" unassigned.
  CHECK(contains(format_error_of([] { inflate_all(single_distance_code_block(1)); }),
                 "invalid Huffman code (distance)"));
  {  // HLIT of 287 literal/length codes.
    BitWriter w;
    w.bits(1, 1), w.bits(2, 2), w.bits(30, 5), w.bits(0, 5), w.bits(0, 4), w.bits(0, 32);
    CHECK(format_error_of([&] { inflate_all(w.bytes); }) ==
          "kiln::inflate: offset 0: dynamic block declares 287 literal/length and 1 distance codes "
          "(expected at most 286 and 30)");
  }
  // Lengths 1 for symbols 0 and 1, zeros for 2..256, 1 for the distance code: no end of block.
  CHECK(contains(format_error_of([] {
                   inflate_all(dynamic_header_with_lengths({{1, 0}, {1, 0}, {18, 138}, {18, 117}, {1, 0}}));
                 }),
                 "dynamic block has no end-of-block code"));
  // Symbols 0, 1 and 256 all of length 1: three codes of one bit.
  CHECK(contains(format_error_of([] {
                   inflate_all(dynamic_header_with_lengths(
                       {{1, 0}, {1, 0}, {18, 138}, {18, 116}, {1, 0}, {1, 0}}));
                 }),
                 "literal/length code: over-subscribed set of code lengths"));
  // A repeat running past the 258 declared lengths.
  CHECK(contains(format_error_of([] {
                   inflate_all(dynamic_header_with_lengths({{18, 138}, {18, 138}}));
                 }),
                 "code-length repeat of 138 runs past the 258 declared code lengths"));
  {  // Bytes after the final block: an error unless the caller asks how many were used.
    Bytes b = stored_stream;
    b.push_back(0xAA);
    CHECK(format_error_of([&] { inflate_all(b); }) ==
          "kiln::inflate: offset 34: 1 byte(s) after the end of the DEFLATE stream");
    std::size_t used = 0;
    CHECK(text_of(kiln::io::inflate(b.data(), b.size(), 100, &used)) == "kiln stores this block as is.");
    CHECK(used == stored_stream.size());
  }
}

TEST_CASE("truncation at every offset is an error") {
  for (std::size_t n = 0; n < two_members.size(); ++n) {
    const Bytes prefix(two_members.begin(), two_members.begin() + static_cast<std::ptrdiff_t>(n));
    if (n == member_one_size) {
      CHECK(text_of(gunzip_all(prefix)) == member_one_text);
      continue;
    }
    CAPTURE(n);
    CHECK(contains(format_error_of([&] { gunzip_all(prefix); }), "unexpected end of data"));
  }
  for (const Bytes* stream : {&stored_stream, &fixed_stream, &dynamic_stream}) {
    for (std::size_t n = 0; n < stream->size(); ++n) {
      const Bytes prefix(stream->begin(), stream->begin() + static_cast<std::ptrdiff_t>(n));
      CAPTURE(n);
      CHECK(contains(format_error_of([&] { inflate_all(prefix); }), "unexpected end of data"));
    }
  }
}

TEST_CASE("output never exceeds max_output") {
  // 'x' then 4000 copies of 258 bytes at distance 1: 1 + 4000 * 258 = 1032001 bytes.
  BitWriter w;
  w.bits(1, 1), w.bits(1, 2), w.fixed('x');
  for (int i = 0; i < 4000; ++i) w.fixed(285), w.code(0, 5);
  w.fixed(256);
  const std::size_t full = 1 + 4000 * 258;
  const Bytes out = inflate_all(w.bytes, full);
  REQUIRE(out.size() == full);
  CHECK(out == Bytes(full, 'x'));
  for (std::size_t limit : {std::size_t(0), std::size_t(1), std::size_t(1000), full - 1}) {
    CAPTURE(limit);
    CHECK(contains(format_error_of([&] { inflate_all(w.bytes, limit); }),
                   "the output would exceed max_output (" + std::to_string(limit) + " bytes)"));
  }
  // A stored block larger than the bound.
  CHECK(contains(format_error_of([] { inflate_all(stored_stream, 28); }), "max_output (28 bytes)"));
}

TEST_CASE("round trips through the system gzip") {
  if (!have_gzip()) {
    MESSAGE("gzip is not on PATH; skipping the round trips");
    return;
  }
  const auto dir = scratch_dir();
  std::mt19937 gen(2024);
  auto random_bytes = [&](std::size_t n, unsigned alphabet) {
    Bytes b(n);
    for (auto& x : b) x = static_cast<std::uint8_t>(gen() % alphabet);
    return b;
  };
  std::vector<std::pair<std::string, Bytes>> inputs;
  inputs.emplace_back("random", random_bytes(1 << 20, 256));         // incompressible: stored blocks
  inputs.emplace_back("four_letters", random_bytes(1 << 19, 4));     // short codes, few matches
  {
    // Skewed bytes with long repeats: phrases copied from earlier with a few mutations.
    Bytes b = random_bytes(4096, 16);
    while (b.size() < (1u << 20)) {
      const std::size_t from = gen() % (b.size() - 300);
      const std::size_t length = 3 + gen() % 290;
      for (std::size_t k = 0; k < length; ++k) b.push_back(b[from + k]);
      if (gen() % 4 == 0) b.push_back(static_cast<std::uint8_t>(gen()));
    }
    inputs.emplace_back("repeats", b);
  }
  inputs.emplace_back("zeros", Bytes(300000, 0));
  inputs.emplace_back("empty", Bytes{});
  for (const auto& input : inputs) {
    const std::string& name = input.first;
    const Bytes& data = input.second;
    const auto plain = dir / name;
    write_file(plain, data);
    for (int level : {1, 6, 9}) {
      CAPTURE(name);
      CAPTURE(level);
      const std::string command = "gzip -f -k -" + std::to_string(level) + " '" + plain.string() + "'";
      REQUIRE(std::system(command.c_str()) == 0);
      const std::string packed = plain.string() + ".gz";
      const Bytes decoded = kiln::io::read_maybe_gzip(packed, data.size());
      CHECK(decoded == data);
      if (!data.empty())
        CHECK(contains(format_error_of([&] { kiln::io::read_maybe_gzip(packed, data.size() - 1); }),
                       "max_output"));
    }
  }
  // Members concatenated by cat decode to the concatenated data; a plain file reads as is.
  const std::string cat = "cat '" + (dir / "four_letters.gz").string() + "' '" +
                          (dir / "repeats.gz").string() + "' > '" + (dir / "both.gz").string() + "'";
  REQUIRE(std::system(cat.c_str()) == 0);
  Bytes both = inputs[1].second;
  both.insert(both.end(), inputs[2].second.begin(), inputs[2].second.end());
  CHECK(kiln::io::read_maybe_gzip((dir / "both.gz").string()) == both);
  CHECK(kiln::io::read_maybe_gzip((dir / "zeros").string()) == inputs[3].second);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a missing file raises FileError naming the file") {
  try {
    kiln::io::read_maybe_gzip("/nonexistent/kiln/file.gz");
    FAIL("no error");
  } catch (const kiln::io::FileError& e) {
    CHECK(contains(e.what(), "cannot open '/nonexistent/kiln/file.gz'"));
  }
}

TEST_CASE("corrupted streams either decode within max_output or throw kiln::Error") {
  std::vector<std::pair<Bytes, bool>> seeds = {{stored_stream, false},
                                                {fixed_stream, false},
                                                {dynamic_stream, false},
                                                {single_distance_code_block(0), false},
                                                {two_members, true}};
  std::mt19937 gen(12345);
  int decoded = 0, rejected = 0;
  for (int iteration = 0; iteration < 6000; ++iteration) {
    const auto& [seed, is_gzip] = seeds[static_cast<std::size_t>(iteration) % seeds.size()];
    Bytes b = seed;
    const unsigned mutations = 1 + gen() % 4;
    for (unsigned m = 0; m < mutations && !b.empty(); ++m) {
      const std::size_t at = gen() % b.size();
      switch (gen() % 5) {
        case 0: b[at] = static_cast<std::uint8_t>(b[at] ^ (1u << (gen() % 8))); break;
        case 1: b[at] = static_cast<std::uint8_t>(gen()); break;
        case 2: b.resize(at); break;
        case 3: b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), static_cast<std::uint8_t>(gen())); break;
        default: b.erase(b.begin() + static_cast<std::ptrdiff_t>(at)); break;
      }
    }
    const std::size_t max_output = iteration % 3 == 0 ? 16 : 4096;
    try {
      const Bytes out = is_gzip ? gunzip_all(b, max_output) : inflate_all(b, max_output);
      CHECK(out.size() <= max_output);
      ++decoded;
    } catch (const kiln::Error&) {
      ++rejected;
    }
  }
  // Both outcomes occur, so the loop exercises the decoder and its checks.
  CHECK(decoded > 0);
  CHECK(rejected > 0);
}
