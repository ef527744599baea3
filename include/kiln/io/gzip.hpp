// kiln/io/gzip.hpp — a DEFLATE (RFC 1951) and gzip (RFC 1952) decoder with bounded output,
// CRC-32, and read_maybe_gzip, which reads a file whole and gunzips it when it starts with 1f 8b.
// Builds on io/json.hpp (FormatError), io/safetensors.hpp (FileError, read_file_bytes).
#pragma once

#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>
#include <kiln/io/json.hpp>         // FormatError
#include <kiln/io/safetensors.hpp>  // FileError, read_file_bytes

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace kiln::io {

// Errors: FormatError (kiln/io/json.hpp) for bytes that break the format, naming the file (when
// known), the byte offset and what was expected there; FileError (kiln/io/safetensors.hpp) for a
// file that cannot be read.

// The output bound the file helpers use when the caller gives none (1 GiB).
inline constexpr std::size_t default_max_output = std::size_t(1) << 30;

namespace detail {

// --- CRC-32 (the polynomial of RFC 1952, section 8), sliced by 8 --------------------------------
// Table k maps a byte to the CRC of that byte followed by k zero bytes, so eight table look-ups
// advance the CRC over eight bytes at once.
using Crc32Tables = std::array<std::array<std::uint32_t, 256>, 8>;

constexpr Crc32Tables make_crc32_tables() {
  Crc32Tables t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t k = 1; k < 8; ++k)
    for (std::size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
  return t;
}

inline constexpr Crc32Tables crc32_tables = make_crc32_tables();

inline std::uint32_t load_le32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
         (std::uint32_t(p[3]) << 24);
}

inline std::uint64_t load_le64(const std::uint8_t* p) {
  return std::uint64_t(load_le32(p)) | (std::uint64_t(load_le32(p + 4)) << 32);
}

inline std::string hex32(std::uint32_t v) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", static_cast<unsigned>(v));
  return text;
}

inline std::string hex8(std::uint8_t v) {
  char text[8];
  std::snprintf(text, sizeof text, "%02x", static_cast<unsigned>(v));
  return text;
}

// Throws FormatError "kiln::OP: NAME: offset N: WHAT" (without "NAME: " when the name is empty).
[[noreturn]] inline void throw_format_error(const char* op, const std::string& name,
                                            std::size_t offset, const std::string& what) {
  std::string message = std::string("kiln::") + op + ": ";
  if (!name.empty()) message += name + ": ";
  message += "offset " + std::to_string(offset) + ": " + what;
  throw FormatError(message);
}

}  // namespace detail

// CRC-32 of `size` bytes at `data`, continuing from `crc` (0 to start), as gzip and zlib compute it.
inline std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc = 0) {
  const auto& t = detail::crc32_tables;
  crc = ~crc;
  while (size >= 8) {
    const std::uint32_t lo = crc ^ detail::load_le32(data);
    const std::uint32_t hi = detail::load_le32(data + 4);
    crc = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
          t[3][hi & 0xFFu] ^ t[2][(hi >> 8) & 0xFFu] ^ t[1][(hi >> 16) & 0xFFu] ^ t[0][hi >> 24];
    data += 8;
    size -= 8;
  }
  while (size--) crc = t[0][(crc ^ *data++) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

namespace detail {

// --- DEFLATE decoding ---------------------------------------------------------------------------

// Where a decoder reports its errors: the op ("inflate", "gunzip") and the file name.
struct InflateContext {
  const char* op;
  const std::string& name;
};

// Reads the input least-significant bit first (RFC 1951, 3.1.1) through a 64-bit buffer. Past the
// end of the input it shifts in zero bytes and remembers it; the decoder checks overrun() after
// each symbol, so a truncated stream is reported as such and never loops.
struct BitReader {
  const std::uint8_t* data;
  std::size_t size;
  std::size_t pos;  // bytes loaded into the buffer so far, the zero bytes past the end included
  std::uint64_t buffer = 0;
  unsigned count = 0;  // valid bits in `buffer`

  // Tops the buffer up to 56..63 bits.
  KILN_FORCEINLINE void refill() {
    if (pos <= size && size - pos >= 8) {
      // Load eight bytes; only the whole bytes that fit are counted. The bits of a partly
      // shifted-in byte above `count` are that byte's own, so loading it again later is harmless.
      buffer |= load_le64(data + pos) << count;
      pos += (63 - count) >> 3;
      count |= 56;
      return;
    }
    while (count < 56) {
      const std::uint64_t byte = pos < size ? data[pos] : 0;
      buffer |= byte << count;
      ++pos;
      count += 8;
    }
  }
  KILN_FORCEINLINE std::uint32_t peek(unsigned n) const {
    return static_cast<std::uint32_t>(buffer & ((std::uint64_t(1) << n) - 1));
  }
  KILN_FORCEINLINE void consume(unsigned n) {
    buffer >>= n;
    count -= n;
  }
  KILN_FORCEINLINE std::uint32_t take(unsigned n) {
    const std::uint32_t v = peek(n);
    consume(n);
    return v;
  }
  // Bits taken from the input so far.
  std::size_t consumed_bits() const { return pos * 8 - count; }
  // The byte holding the next unread bit.
  std::size_t offset() const { return consumed_bits() / 8; }
  // True once a bit past the end of the input has been taken.
  KILN_FORCEINLINE bool overrun() const { return pos > size && consumed_bits() > size * 8; }
};

// One entry of a Huffman look-up table, indexed by the next input bits.
struct HuffmanEntry {
  std::uint16_t value;  // the symbol, or for a link the index of its sub-table
  std::uint8_t bits;    // code length to consume, or for a link the sub-table's index width
  std::uint8_t kind;    // one of the kinds below
};
inline constexpr std::uint8_t huffman_symbol = 0;
inline constexpr std::uint8_t huffman_link = 1;
inline constexpr std::uint8_t huffman_invalid = 2;

// A canonical Huffman code (RFC 1951, 3.2.2) as a two-level table: the first `root_bits` input
// bits index the root table; codes longer than that continue in a sub-table of the root entry.
struct HuffmanTable {
  std::vector<HuffmanEntry> entries;
  unsigned root_bits = 1;

  // Builds the table from code lengths (0 = unused symbol, at most 15). Returns nullptr, or the
  // reason the lengths do not form a usable prefix code. An incomplete code is accepted only when
  // `allow_single` and it has at most one code, of length 1 (RFC 1951, 3.2.7, allows one distance
  // code); otherwise it is rejected, as zlib does.
  const char* build(const std::uint8_t* lengths, unsigned count, unsigned max_root,
                    bool allow_single) {
    unsigned per_length[16] = {};
    for (unsigned s = 0; s < count; ++s) ++per_length[lengths[s]];
    per_length[0] = 0;
    unsigned max_length = 0;
    for (unsigned l = 1; l <= 15; ++l)
      if (per_length[l]) max_length = l;
    // Kraft sum: `left` counts the code words of the current length still unassigned.
    int left = 1;
    for (unsigned l = 1; l <= 15; ++l) {
      left = left * 2 - static_cast<int>(per_length[l]);
      if (left < 0) return "over-subscribed set of code lengths";
    }
    if (left > 0 && !(allow_single && max_length <= 1)) return "incomplete set of code lengths";

    root_bits = max_length < 1 ? 1 : (max_length < max_root ? max_length : max_root);
    const unsigned sub_bits = max_length > root_bits ? max_length - root_bits : 0;
    entries.assign(std::size_t(1) << root_bits, HuffmanEntry{0, 0, huffman_invalid});

    unsigned next_code[16] = {};
    unsigned code = 0;
    for (unsigned l = 1; l <= 15; ++l) {
      code = (code + per_length[l - 1]) << 1;
      next_code[l] = code;
    }
    for (unsigned s = 0; s < count; ++s) {
      const unsigned l = lengths[s];
      if (l == 0) continue;
      // Codes are sent most significant bit first; the reader sees them reversed.
      const unsigned c = next_code[l]++;
      unsigned reversed = 0;
      for (unsigned b = 0; b < l; ++b) reversed |= ((c >> b) & 1u) << (l - 1 - b);
      const HuffmanEntry symbol{static_cast<std::uint16_t>(s), static_cast<std::uint8_t>(l),
                                huffman_symbol};
      if (l <= root_bits) {
        for (std::size_t i = reversed; i < (std::size_t(1) << root_bits); i += std::size_t(1) << l)
          entries[i] = symbol;
      } else {
        const std::size_t root = reversed & ((1u << root_bits) - 1);
        if (entries[root].kind != huffman_link) {
          entries[root] = HuffmanEntry{static_cast<std::uint16_t>(entries.size()),
                                       static_cast<std::uint8_t>(sub_bits), huffman_link};
          entries.resize(entries.size() + (std::size_t(1) << sub_bits),
                         HuffmanEntry{0, 0, huffman_invalid});
        }
        const std::size_t base = entries[root].value;
        for (std::size_t i = reversed >> root_bits; i < (std::size_t(1) << sub_bits);
             i += std::size_t(1) << (l - root_bits))
          entries[base + i] = symbol;
      }
    }
    return nullptr;
  }
};

// The growing output of a decoder; never holds more than `max_output` bytes.
struct InflateOutput {
  std::vector<std::uint8_t> bytes;  // bytes[0, size) are written; the rest is spare capacity
  std::size_t size = 0;
  std::size_t max_output = 0;
};

// Base lengths and extra bits of length symbols 257..285, and of distance symbols 0..29
// (RFC 1951, 3.2.5).
inline constexpr std::uint16_t length_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,
                                                  15, 17, 19, 23, 27, 31, 35, 43, 51,  59,
                                                  67, 83, 99, 115, 131, 163, 195, 227, 258};
inline constexpr std::uint8_t length_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                  2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
inline constexpr std::uint16_t distance_base[30] = {
    1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
    193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
inline constexpr std::uint8_t distance_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                                    6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

// Decodes one raw DEFLATE stream that starts at byte `start` of data[0, size), appending to `out`.
// Back-references may reach only bytes written since out.size was `window_start`. Returns the
// offset of the first byte after the stream (the final block's last byte).
class Inflater {
 public:
  Inflater(const std::uint8_t* data, std::size_t size, std::size_t start, InflateOutput& out,
           std::size_t window_start, const InflateContext& context)
      : in_{data, size, start}, out_(out), window_start_(window_start), context_(context) {}

  std::size_t run() {
    bool final_block = false;
    while (!final_block) {
      in_.refill();
      final_block = in_.take(1) != 0;
      const unsigned type = in_.take(2);
      check_overrun();
      if (type == 0) {
        stored_block();
      } else if (type == 1) {
        const auto& fixed = fixed_tables();
        codes(fixed.literal_length, fixed.distance);
      } else if (type == 2) {
        dynamic_tables();
        codes(literal_length_, distance_);
      } else {
        fail(in_.offset(), "invalid block type 3 (expected 0 stored, 1 fixed or 2 dynamic Huffman)");
      }
    }
    return (in_.consumed_bits() + 7) / 8;
  }

 private:
  struct FixedTables {
    HuffmanTable literal_length, distance;
  };

  // The fixed codes of RFC 1951, 3.2.6 (30 distance codes of length 5 plus the two unused ones).
  static const FixedTables& fixed_tables() {
    static const FixedTables tables = [] {
      FixedTables t;
      std::uint8_t lengths[288];
      for (unsigned s = 0; s < 288; ++s) lengths[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
      t.literal_length.build(lengths, 288, 10, false);
      for (unsigned s = 0; s < 32; ++s) lengths[s] = 5;
      t.distance.build(lengths, 32, 10, false);
      return t;
    }();
    return tables;
  }

  [[noreturn]] void fail(std::size_t offset, const std::string& what) const {
    // Garbage decoded from the zero bits past the end is reported as the truncation it is.
    if (in_.overrun())
      throw_format_error(context_.op, context_.name, in_.size,
                         "unexpected end of data inside a DEFLATE stream");
    throw_format_error(context_.op, context_.name, offset, what);
  }

  KILN_FORCEINLINE void check_overrun() const {
    if (in_.overrun())
      throw_format_error(context_.op, context_.name, in_.size,
                         "unexpected end of data inside a DEFLATE stream");
  }

  // Decodes one symbol; the buffer must hold at least 15 bits (or be padded past the end).
  KILN_FORCEINLINE unsigned decode(const HuffmanTable& table, const char* what) {
    HuffmanEntry e = table.entries[in_.peek(table.root_bits)];
    unsigned looked_at = table.root_bits;
    if (e.kind == huffman_link) {
      looked_at += e.bits;
      e = table.entries[e.value + ((in_.buffer >> table.root_bits) & ((1u << e.bits) - 1))];
    }
    if (e.kind != huffman_symbol) {
      // Bits past the end of the input among those looked at: a truncation, not a bad code.
      if (in_.pos > in_.size && in_.consumed_bits() + looked_at > in_.size * 8)
        throw_format_error(context_.op, context_.name, in_.size,
                           "unexpected end of data inside a DEFLATE stream");
      fail(in_.offset(), std::string("invalid Huffman code (") + what + ")");
    }
    in_.consume(e.bits);
    return e.value;
  }

  // Makes room for `n` more output bytes, growing geometrically but never past max_output.
  void reserve_output(std::size_t n) {
    if (out_.max_output - out_.size < n)
      fail(in_.offset(), "the output would exceed max_output (" + std::to_string(out_.max_output) +
                             " bytes)");
    if (out_.bytes.size() - out_.size >= n) return;
    std::size_t grown = out_.bytes.size() * 2;
    if (grown < out_.size + n) grown = out_.size + n;
    if (grown < (std::size_t(1) << 16)) grown = std::size_t(1) << 16;
    if (grown > out_.max_output) grown = out_.max_output;
    out_.bytes.resize(grown);
  }

  void stored_block() {
    // Skip to the byte boundary, then hand the whole bytes still buffered back to the input.
    in_.consume(in_.count & 7u);
    in_.pos -= in_.count / 8;
    in_.buffer = 0;
    in_.count = 0;
    if (in_.pos > in_.size) check_overrun();
    const std::size_t header = in_.pos;
    if (in_.size - header < 4)
      throw_format_error(context_.op, context_.name, in_.size,
                         "unexpected end of data in a stored block header (expected LEN and NLEN)");
    const unsigned length = in_.data[header] | (unsigned(in_.data[header + 1]) << 8);
    const unsigned complement = in_.data[header + 2] | (unsigned(in_.data[header + 3]) << 8);
    if (length != (~complement & 0xFFFFu))
      fail(header, "stored block length " + std::to_string(length) +
                       " does not match its one's complement NLEN " + std::to_string(complement));
    in_.pos = header + 4;
    if (in_.size - in_.pos < length)
      throw_format_error(context_.op, context_.name, in_.size,
                         "unexpected end of data in a stored block of " + std::to_string(length) +
                             " bytes starting at offset " + std::to_string(in_.pos));
    reserve_output(length);
    if (length) std::memcpy(out_.bytes.data() + out_.size, in_.data + in_.pos, length);
    out_.size += length;
    in_.pos += length;
  }

  // Reads the code lengths of a dynamic block (RFC 1951, 3.2.7) and builds its two tables.
  void dynamic_tables() {
    in_.refill();
    const std::size_t header = in_.offset();
    const unsigned literal_count = in_.take(5) + 257;
    const unsigned distance_count = in_.take(5) + 1;
    const unsigned code_length_count = in_.take(4) + 4;
    if (literal_count > 286 || distance_count > 30)
      fail(header, "dynamic block declares " + std::to_string(literal_count) + " literal/length and " +
                       std::to_string(distance_count) +
                       " distance codes (expected at most 286 and 30)");
    static constexpr std::uint8_t order[19] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                               11, 4,  12, 3, 13, 2, 14, 1, 15};
    std::uint8_t code_lengths[19] = {};
    in_.refill();  // 3 * 19 = 57 bits at most; take them in two runs
    for (unsigned i = 0; i < code_length_count; ++i) {
      if (i == 10) in_.refill();
      code_lengths[order[i]] = static_cast<std::uint8_t>(in_.take(3));
    }
    check_overrun();
    if (const char* why = code_length_code_.build(code_lengths, 19, 7, false))
      fail(header, std::string("code-length code: ") + why);

    std::uint8_t lengths[286 + 30] = {};
    const unsigned total = literal_count + distance_count;
    unsigned n = 0;
    while (n < total) {
      in_.refill();
      const std::size_t at = in_.offset();
      const unsigned symbol = decode(code_length_code_, "code-length code");
      if (symbol < 16) {
        lengths[n++] = static_cast<std::uint8_t>(symbol);
        continue;
      }
      unsigned repeat = 0;
      std::uint8_t value = 0;
      if (symbol == 16) {
        if (n == 0) fail(at, "code length 16 (repeat the previous length) with no previous length");
        value = lengths[n - 1];
        repeat = 3 + in_.take(2);
      } else if (symbol == 17) {
        repeat = 3 + in_.take(3);
      } else {
        repeat = 11 + in_.take(7);
      }
      check_overrun();
      if (repeat > total - n)
        fail(at, "code-length repeat of " + std::to_string(repeat) + " runs past the " +
                     std::to_string(total) + " declared code lengths");
      for (unsigned k = 0; k < repeat; ++k) lengths[n++] = value;
    }
    check_overrun();
    if (lengths[256] == 0) fail(header, "dynamic block has no end-of-block code (symbol 256)");
    if (const char* why = literal_length_.build(lengths, literal_count, 10, true))
      fail(header, std::string("literal/length code: ") + why);
    if (const char* why = distance_.build(lengths + literal_count, distance_count, 8, true))
      fail(header, std::string("distance code: ") + why);
  }

  // Decodes literals and length/distance pairs up to the end-of-block symbol.
  void codes(const HuffmanTable& literal_length, const HuffmanTable& distance) {
    std::uint8_t* out = out_.bytes.data();
    std::size_t size = out_.size;
    std::size_t capacity = out_.bytes.size();
    for (;;) {
      // 56 buffered bits cover the longest length/distance pair: 15 + 5 + 15 + 13 = 48 bits.
      in_.refill();
      const std::size_t at = in_.offset();
      const unsigned symbol = decode(literal_length, "literal/length");
      if (symbol < 256) {
        if (size == capacity) {
          out_.size = size;
          reserve_output(1);
          out = out_.bytes.data();
          capacity = out_.bytes.size();
        }
        out[size++] = static_cast<std::uint8_t>(symbol);
        if (in_.pos > in_.size) check_overrun();
        continue;
      }
      if (symbol == 256) {
        check_overrun();
        break;
      }
      const unsigned l = symbol - 257;
      if (l >= 29) {
        out_.size = size;
        fail(at, "invalid length symbol " + std::to_string(symbol) + " (expected 257 to 285)");
      }
      const std::size_t length = length_base[l] + in_.take(length_extra[l]);
      const unsigned d = decode(distance, "distance");
      if (d >= 30) {
        out_.size = size;
        fail(at, "invalid distance symbol " + std::to_string(d) + " (expected 0 to 29)");
      }
      const std::size_t dist = distance_base[d] + in_.take(distance_extra[d]);
      if (in_.pos > in_.size) check_overrun();
      if (dist > size - window_start_) {
        out_.size = size;
        fail(at, "distance " + std::to_string(dist) + " reaches before the start of the output (" +
                     std::to_string(size - window_start_) + " bytes written)");
      }
      if (capacity - size < length) {
        out_.size = size;
        reserve_output(length);
        out = out_.bytes.data();
        capacity = out_.bytes.size();
      }
      std::uint8_t* to = out + size;
      const std::uint8_t* from = to - dist;
      if (dist >= length) {
        std::memcpy(to, from, length);
      } else if (dist == 1) {
        std::memset(to, *from, length);
      } else {
        for (std::size_t k = 0; k < length; ++k) to[k] = from[k];  // overlapping: repeats the run
      }
      size += length;
    }
    out_.size = size;
  }

  BitReader in_;
  InflateOutput& out_;
  std::size_t window_start_;
  const InflateContext& context_;
  HuffmanTable code_length_code_, literal_length_, distance_;
};

}  // namespace detail

// Decodes a raw DEFLATE stream (RFC 1951: stored, fixed and dynamic Huffman blocks). The output
// never grows past `max_output` bytes: a stream that would produce more throws FormatError.
// With `consumed` null, bytes after the final block are an error; otherwise they are allowed and
// *consumed receives the length of the stream.
inline std::vector<std::uint8_t> inflate(const std::uint8_t* data, std::size_t size,
                                         std::size_t max_output, std::size_t* consumed = nullptr) {
  const std::string name;
  const detail::InflateContext context{"inflate", name};
  detail::InflateOutput out;
  out.max_output = max_output;
  const std::size_t end = detail::Inflater(data, size, 0, out, 0, context).run();
  if (consumed) {
    *consumed = end;
  } else if (end != size) {
    detail::throw_format_error("inflate", name, end,
                               std::to_string(size - end) +
                                   " byte(s) after the end of the DEFLATE stream");
  }
  out.bytes.resize(out.size);
  return std::move(out.bytes);
}

// Decodes gzip data (RFC 1952): one or more members, each a header (flags FTEXT, FHCRC, FEXTRA,
// FNAME, FCOMMENT), a DEFLATE stream and a trailer whose CRC-32 and ISIZE are checked; their
// outputs are concatenated. Zero bytes after the last member are ignored (tape padding); any other
// trailing bytes are an error. `name` (a file name) leads every error message. The output never
// grows past `max_output` bytes.
inline std::vector<std::uint8_t> gunzip(const std::uint8_t* data, std::size_t size,
                                        std::size_t max_output, const std::string& name = {}) {
  using detail::throw_format_error;
  const char* op = "gunzip";
  const detail::InflateContext context{op, name};
  detail::InflateOutput out;
  out.max_output = max_output;
  // Start at the size the last trailer claims, within what the input could expand to (DEFLATE
  // expands at most 1032:1); only a first guess, the output still grows on demand.
  if (size >= 18) {
    std::size_t guess = detail::load_le32(data + size - 4);
    if (guess / 1032 > size) guess = size * 1032;
    if (guess > max_output) guess = max_output;
    out.bytes.resize(guess);
  }

  std::size_t at = 0;
  for (int member = 0;; ++member) {
    if (member > 0) {
      std::size_t rest = at;
      while (rest < size && data[rest] == 0) ++rest;
      if (rest == size) break;
      if (rest != at)
        throw_format_error(op, name, rest,
                           "non-zero byte after the zero padding that follows member " +
                               std::to_string(member));
    }
    // Header (RFC 1952, 2.3): ID1 ID2 CM FLG MTIME(4) XFL OS.
    const std::size_t start = at;
    const std::size_t available = size - at;
    if ((available >= 1 && data[at] != 0x1f) || (available >= 2 && data[at + 1] != 0x8b)) {
      std::string found = detail::hex8(data[at]);
      if (available >= 2) found += " " + detail::hex8(data[at + 1]);
      throw_format_error(op, name, at,
                         member == 0 ? "expected the gzip magic bytes 1f 8b, found " + found
                                     : "expected another gzip member (1f 8b) or the end of the "
                                       "data after member " + std::to_string(member) +
                                           ", found " + found);
    }
    if (available < 10)
      throw_format_error(op, name, size,
                         "unexpected end of data in the gzip header (expected 10 bytes, found " +
                             std::to_string(available) + ")");
    if (data[at + 2] != 8)
      throw_format_error(op, name, at + 2,
                         "compression method " + std::to_string(data[at + 2]) +
                             " (expected 8, deflate)");
    const std::uint8_t flags = data[at + 3];
    if (flags & 0xE0)
      throw_format_error(op, name, at + 3,
                         "reserved header flag bits set (flags 0x" + detail::hex8(flags) + ")");
    at += 10;
    if (flags & 0x04) {  // FEXTRA: XLEN, then XLEN bytes
      if (size - at < 2)
        throw_format_error(op, name, size, "unexpected end of data in the FEXTRA length");
      const std::size_t extra = data[at] | (std::size_t(data[at + 1]) << 8);
      at += 2;
      if (size - at < extra)
        throw_format_error(op, name, size,
                           "unexpected end of data in the FEXTRA field (expected " +
                               std::to_string(extra) + " bytes)");
      at += extra;
    }
    for (std::uint8_t field : {std::uint8_t(0x08), std::uint8_t(0x10)}) {  // FNAME, FCOMMENT
      if (!(flags & field)) continue;
      const void* zero = std::memchr(data + at, 0, size - at);
      if (!zero)
        throw_format_error(op, name, size,
                           std::string("unexpected end of data in the ") +
                               (field == 0x08 ? "FNAME" : "FCOMMENT") +
                               " field (expected a zero-terminated string)");
      at = static_cast<std::size_t>(static_cast<const std::uint8_t*>(zero) - data) + 1;
    }
    if (flags & 0x02) {  // FHCRC: the low 16 bits of the CRC-32 of the header so far
      if (size - at < 2)
        throw_format_error(op, name, size, "unexpected end of data in the header CRC (FHCRC)");
      const unsigned stored = data[at] | (unsigned(data[at + 1]) << 8);
      const unsigned computed = crc32(data + start, at - start) & 0xFFFFu;
      if (stored != computed)
        throw_format_error(op, name, at,
                           "header CRC-16 mismatch: stored " + std::to_string(stored) +
                               ", computed " + std::to_string(computed));
      at += 2;
    }

    const std::size_t member_output = out.size;
    at = detail::Inflater(data, size, at, out, member_output, context).run();

    // Trailer: CRC-32 and ISIZE (the output length modulo 2^32), both little-endian.
    if (size - at < 8)
      throw_format_error(op, name, size,
                         "unexpected end of data in the gzip trailer (expected CRC-32 and ISIZE, "
                         "8 bytes, found " + std::to_string(size - at) + ")");
    const std::uint32_t stored_crc = detail::load_le32(data + at);
    const std::uint32_t computed_crc = crc32(out.bytes.data() + member_output, out.size - member_output);
    if (stored_crc != computed_crc)
      throw_format_error(op, name, at,
                         "CRC-32 mismatch: stored " + detail::hex32(stored_crc) + ", computed " +
                             detail::hex32(computed_crc) + " over the decoded member");
    const std::uint32_t stored_size = detail::load_le32(data + at + 4);
    const auto decoded_size = static_cast<std::uint32_t>(out.size - member_output);
    if (stored_size != decoded_size)
      throw_format_error(op, name, at + 4,
                         "ISIZE mismatch: stored " + std::to_string(stored_size) + ", decoded " +
                             std::to_string(decoded_size) + " bytes (modulo 2^32)");
    at += 8;
  }
  out.bytes.resize(out.size);
  return std::move(out.bytes);
}

inline std::vector<std::uint8_t> gunzip(const std::vector<std::uint8_t>& data,
                                        std::size_t max_output = default_max_output,
                                        const std::string& name = {}) {
  return gunzip(data.data(), data.size(), max_output, name);
}

// True when the data starts with the gzip magic bytes 1f 8b.
inline bool is_gzip(const std::uint8_t* data, std::size_t size) {
  return size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
}

// The content of the file at `path`, gunzipped when it starts with 1f 8b. Never more than
// `max_output` bytes: a larger result throws FormatError naming the file.
inline std::vector<std::uint8_t> read_maybe_gzip(const std::string& path,
                                                 std::size_t max_output = default_max_output) {
  const std::string bytes = read_file_bytes(path);  // kiln/io/safetensors.hpp
  const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data());
  if (is_gzip(data, bytes.size())) return gunzip(data, bytes.size(), max_output, path);
  if (bytes.size() > max_output)
    detail::throw_format_error("read_maybe_gzip", path, 0,
                               "the file has " + std::to_string(bytes.size()) +
                                   " bytes, more than max_output (" + std::to_string(max_output) +
                                   ")");
  return std::vector<std::uint8_t>(data, data + bytes.size());
}

}  // namespace kiln::io
