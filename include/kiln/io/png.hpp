// kiln/io/png.hpp — PNG writing (8-bit gray, RGB, RGBA; adaptive row filters; zlib/DEFLATE with LZ77
// and stored/fixed/dynamic blocks), write_png (atomic), and image_grid to tile [N, C, H, W] tensors.
// Builds on io/gzip.hpp (crc32), io/safetensors.hpp (write_file_atomic), core/tensor.hpp, core/error.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/io/gzip.hpp>         // crc32
#include <kiln/io/safetensors.hpp>  // write_file_atomic

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::io {

// An 8-bit image: `channels` samples per pixel (1 gray, 3 RGB, 4 RGBA), interleaved, rows from
// top to bottom; pixels.size() == width * height * channels.
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;
};

// Adler-32 (RFC 1950, section 8.2) of `size` bytes, continuing from `adler` (1 to start).
inline std::uint32_t adler32(const std::uint8_t* data, std::size_t size, std::uint32_t adler = 1) {
  std::uint32_t a = adler & 0xFFFFu;
  std::uint32_t b = adler >> 16;
  // 5552 is the largest n for which b cannot pass 2^32 before the reduction:
  // 255 n (n + 1) / 2 + (n + 1) (65521 - 1) < 2^32 (zlib's NMAX).
  while (size > 0) {
    std::size_t n = size < 5552 ? size : 5552;
    size -= n;
    while (n--) {
      a += *data++;
      b += a;
    }
    a %= 65521u;
    b %= 65521u;
  }
  return (b << 16) | a;
}

namespace detail {

// --- DEFLATE encoding (RFC 1951) ----------------------------------------------------------------

// Writes bits least-significant first into bytes (RFC 1951, 3.1.1).
struct BitWriter {
  std::vector<std::uint8_t>& out;
  std::uint64_t buffer = 0;
  unsigned count = 0;  // bits in `buffer`, always < 8 between calls

  void put(std::uint32_t bits, unsigned n) {  // n <= 32
    buffer |= std::uint64_t(bits) << count;
    count += n;
    while (count >= 8) {
      out.push_back(static_cast<std::uint8_t>(buffer));
      buffer >>= 8;
      count -= 8;
    }
  }
  // Pads with zero bits up to the next byte boundary.
  void align() {
    if (count) put(0, 8 - count);
  }
  std::uint64_t bit_position() const { return std::uint64_t(out.size()) * 8 + count; }
};

// A literal byte (distance == 0, the byte in `length`) or a back-reference of `length` bytes
// (3..258) from `distance` bytes back (1..32768).
struct DeflateToken {
  std::uint16_t length;
  std::uint16_t distance;
};

// Length 3..258 -> literal/length symbol 257..285 (RFC 1951, 3.2.5). Lengths 3..10 have one
// symbol each; from 11 on, each power-of-two range [2^k + 3, 2^(k+1) + 2] splits into four
// symbols, the top two bits of (length - 3) below the leading one choosing among them.
inline unsigned deflate_length_symbol(unsigned length) {
  if (length == 258) return 285;
  const unsigned x = length - 3;
  if (x < 8) return 257 + x;
  const unsigned k = static_cast<unsigned>(std::bit_width(x)) - 1;  // x in [2^k, 2^(k+1))
  return 257 + 4 * (k - 1) + ((x >> (k - 2)) & 3u);
}

// Distance 1..32768 -> distance symbol 0..29 (RFC 1951, 3.2.5): distances 1..4 have one symbol
// each; from 5 on each power-of-two range of (distance - 1) splits in two.
inline unsigned deflate_distance_symbol(unsigned distance) {
  const unsigned x = distance - 1;
  if (x < 4) return x;
  const unsigned k = static_cast<unsigned>(std::bit_width(x)) - 1;
  return 2 * k + ((x >> (k - 1)) & 1u);
}

// Code lengths of a Huffman code for `frequencies` (0 = unused symbol) whose longest code has at
// most `limit` bits. A plain Huffman tree (two-queue construction over the leaves sorted by
// frequency) is built; when it is deeper than `limit`, the frequencies are halved (rounding up, so
// used symbols stay used), which flattens the tree, and it is built again. All frequencies equal
// gives depth ceil(log2(symbols)), within every limit DEFLATE uses, so the loop ends.
inline void huffman_code_lengths(const std::uint32_t* frequencies, unsigned count, unsigned limit,
                                 std::uint8_t* lengths) {
  std::vector<std::uint64_t> frequency(frequencies, frequencies + count);
  std::vector<unsigned> leaves;
  std::vector<std::uint64_t> weight;
  std::vector<std::size_t> parent;
  std::vector<unsigned> depth;
  for (;;) {
    std::fill(lengths, lengths + count, std::uint8_t(0));
    leaves.clear();
    for (unsigned s = 0; s < count; ++s)
      if (frequency[s]) leaves.push_back(s);
    const std::size_t n = leaves.size();
    if (n == 0) return;
    if (n == 1) {
      lengths[leaves[0]] = 1;
      return;
    }
    std::sort(leaves.begin(), leaves.end(), [&](unsigned a, unsigned b) {
      return frequency[a] != frequency[b] ? frequency[a] < frequency[b] : a < b;
    });
    // Nodes 0..n-1 are the leaves in that order, n..2n-2 the internal nodes in the order they are
    // made, which is also ascending weight: the two smallest are always at the queues' fronts.
    const std::size_t nodes = 2 * n - 1;
    weight.assign(nodes, 0);
    parent.assign(nodes, 0);
    for (std::size_t i = 0; i < n; ++i) weight[i] = frequency[leaves[i]];
    std::size_t next_leaf = 0, next_internal = n, made = n;
    const auto pick = [&]() {
      if (next_leaf < n && (next_internal == made || weight[next_leaf] <= weight[next_internal]))
        return next_leaf++;
      return next_internal++;
    };
    while (made < nodes) {
      const std::size_t a = pick();
      const std::size_t b = pick();
      weight[made] = weight[a] + weight[b];
      parent[a] = parent[b] = made;
      ++made;
    }
    // A parent is made after its children, so walking down from the root sets each depth once.
    depth.assign(nodes, 0);
    unsigned deepest = 0;
    for (std::size_t i = nodes - 1; i-- > 0;) {
      depth[i] = depth[parent[i]] + 1;
      if (i < n && depth[i] > deepest) deepest = depth[i];
    }
    if (deepest <= limit) {
      for (std::size_t i = 0; i < n; ++i) lengths[leaves[i]] = static_cast<std::uint8_t>(depth[i]);
      return;
    }
    for (auto& f : frequency) f = (f + 1) / 2;
  }
}

// The canonical codes of RFC 1951, 3.2.2, for `lengths`, each with its bits reversed so that
// BitWriter::put (least significant bit first) sends the code most significant bit first.
inline void canonical_codes(const std::uint8_t* lengths, unsigned count, std::uint16_t* codes) {
  unsigned per_length[16] = {};
  for (unsigned s = 0; s < count; ++s) ++per_length[lengths[s]];
  per_length[0] = 0;
  unsigned next_code[16] = {};
  unsigned code = 0;
  for (unsigned l = 1; l <= 15; ++l) {
    code = (code + per_length[l - 1]) << 1;
    next_code[l] = code;
  }
  for (unsigned s = 0; s < count; ++s) {
    const unsigned l = lengths[s];
    codes[s] = 0;
    if (l == 0) continue;
    const unsigned c = next_code[l]++;
    unsigned reversed = 0;
    for (unsigned i = 0; i < l; ++i) reversed |= ((c >> i) & 1u) << (l - 1 - i);
    codes[s] = static_cast<std::uint16_t>(reversed);
  }
}

// One code-length symbol of a dynamic block header (RFC 1951, 3.2.7): 0..15 a length, 16 repeat
// the previous length 3..6 times, 17 a run of 3..10 zeros, 18 a run of 11..138 zeros; `extra` is
// the value of its extra bits.
struct CodeLengthSymbol {
  std::uint8_t symbol;
  std::uint8_t extra;
};

inline std::vector<CodeLengthSymbol> run_length_code_lengths(const std::uint8_t* lengths, unsigned count) {
  std::vector<CodeLengthSymbol> out;
  unsigned i = 0;
  while (i < count) {
    const std::uint8_t value = lengths[i];
    unsigned run = 1;
    while (i + run < count && lengths[i + run] == value) ++run;
    i += run;
    if (value == 0) {
      while (run >= 11) {
        const unsigned n = run < 138 ? run : 138;
        out.push_back({18, static_cast<std::uint8_t>(n - 11)});
        run -= n;
      }
      if (run >= 3) {
        out.push_back({17, static_cast<std::uint8_t>(run - 3)});
        run = 0;
      }
      while (run--) out.push_back({0, 0});
    } else {
      out.push_back({value, 0});
      --run;
      while (run >= 3) {
        const unsigned n = run < 6 ? run : 6;
        out.push_back({16, static_cast<std::uint8_t>(n - 3)});
        run -= n;
      }
      while (run--) out.push_back({value, 0});
    }
  }
  return out;
}

inline constexpr unsigned code_length_extra_bits[19] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                        0, 0, 0, 0, 0, 0, 2, 3, 7};
inline constexpr std::uint8_t code_length_order[19] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                                       11, 4,  12, 3, 13, 2, 14, 1, 15};

// Writes the blocks of one DEFLATE stream: each batch of tokens becomes a stored, fixed-Huffman
// or dynamic-Huffman block, whichever takes the fewest bits.
class DeflateBlockWriter {
 public:
  explicit DeflateBlockWriter(std::vector<std::uint8_t>& out) : bits_{out} {}

  // Writes the tokens that encode data[begin, end) as one block (several stored blocks when
  // stored wins and the range exceeds 65535 bytes).
  void write(const std::vector<DeflateToken>& tokens, const std::uint8_t* data, std::size_t begin,
             std::size_t end, bool final) {
    std::array<std::uint32_t, 286> literal_frequency{};
    std::array<std::uint32_t, 30> distance_frequency{};
    std::uint64_t extra_bits = 0;
    for (const DeflateToken& t : tokens) {
      if (t.distance == 0) {
        ++literal_frequency[t.length];
        continue;
      }
      const unsigned l = deflate_length_symbol(t.length);
      const unsigned d = deflate_distance_symbol(t.distance);
      ++literal_frequency[l];
      ++distance_frequency[d];
      extra_bits += length_extra[l - 257] + distance_extra[d];
    }
    literal_frequency[256] = 1;

    // Fixed code (RFC 1951, 3.2.6).
    std::array<std::uint8_t, 288> fixed_literal{};
    std::array<std::uint8_t, 30> fixed_distance{};
    for (unsigned s = 0; s < 288; ++s) fixed_literal[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
    fixed_distance.fill(5);

    // Dynamic code: at least two used symbols per alphabet, so that each code is complete (a
    // lone code of one bit is legal for distances but some decoders refuse it; zlib does this too).
    std::array<std::uint32_t, 286> literal_count = literal_frequency;
    std::array<std::uint32_t, 30> distance_count = distance_frequency;
    ensure_two_used(literal_count.data(), 286);
    ensure_two_used(distance_count.data(), 30);
    std::array<std::uint8_t, 286 + 30> dynamic_lengths{};
    huffman_code_lengths(literal_count.data(), 286, 15, dynamic_lengths.data());
    huffman_code_lengths(distance_count.data(), 30, 15, dynamic_lengths.data() + 286);
    unsigned literal_codes = 286, distance_codes = 30;
    while (literal_codes > 257 && dynamic_lengths[literal_codes - 1] == 0) --literal_codes;
    while (distance_codes > 1 && dynamic_lengths[286 + distance_codes - 1] == 0) --distance_codes;
    std::array<std::uint8_t, 286 + 30> header_lengths{};
    std::copy_n(dynamic_lengths.begin(), literal_codes, header_lengths.begin());
    std::copy_n(dynamic_lengths.begin() + 286, distance_codes, header_lengths.begin() + literal_codes);
    const std::vector<CodeLengthSymbol> header =
        run_length_code_lengths(header_lengths.data(), literal_codes + distance_codes);
    std::array<std::uint32_t, 19> code_length_frequency{};
    for (const CodeLengthSymbol& c : header) ++code_length_frequency[c.symbol];
    ensure_two_used(code_length_frequency.data(), 19);
    std::array<std::uint8_t, 19> code_length_lengths{};
    huffman_code_lengths(code_length_frequency.data(), 19, 7, code_length_lengths.data());
    unsigned code_length_codes = 19;
    while (code_length_codes > 4 && code_length_lengths[code_length_order[code_length_codes - 1]] == 0)
      --code_length_codes;

    std::uint64_t header_bits = 5 + 5 + 4 + 3 * std::uint64_t(code_length_codes);
    for (const CodeLengthSymbol& c : header)
      header_bits += code_length_lengths[c.symbol] + code_length_extra_bits[c.symbol];

    const auto data_bits = [&](const std::uint8_t* literal, const std::uint8_t* distance) {
      std::uint64_t total = extra_bits;
      for (unsigned s = 0; s < 286; ++s) total += std::uint64_t(literal_frequency[s]) * literal[s];
      for (unsigned s = 0; s < 30; ++s) total += std::uint64_t(distance_frequency[s]) * distance[s];
      return total;
    };
    const std::uint64_t fixed_cost = 3 + data_bits(fixed_literal.data(), fixed_distance.data());
    const std::uint64_t dynamic_cost =
        3 + header_bits + data_bits(dynamic_lengths.data(), dynamic_lengths.data() + 286);
    // Stored: per block 3 header bits, padding to a byte, LEN and NLEN, then the bytes.
    const std::size_t bytes = end - begin;
    const std::uint64_t stored_blocks = bytes == 0 ? 1 : (bytes + 65534) / 65535;
    const std::uint64_t first_padding = (8 - (bits_.bit_position() + 3) % 8) % 8;
    const std::uint64_t stored_cost =
        3 + first_padding + 32 + (stored_blocks - 1) * (3 + 5 + 32) + std::uint64_t(bytes) * 8;

    if (stored_cost <= fixed_cost && stored_cost <= dynamic_cost) {
      write_stored(data + begin, bytes, final);
    } else if (fixed_cost <= dynamic_cost) {
      bits_.put(final ? 1u : 0u, 1);
      bits_.put(1, 2);
      write_tokens(tokens, fixed_literal.data(), 288, fixed_distance.data());
    } else {
      bits_.put(final ? 1u : 0u, 1);
      bits_.put(2, 2);
      bits_.put(literal_codes - 257, 5);
      bits_.put(distance_codes - 1, 5);
      bits_.put(code_length_codes - 4, 4);
      for (unsigned i = 0; i < code_length_codes; ++i) bits_.put(code_length_lengths[code_length_order[i]], 3);
      std::array<std::uint16_t, 19> code_length_bits{};
      canonical_codes(code_length_lengths.data(), 19, code_length_bits.data());
      for (const CodeLengthSymbol& c : header) {
        bits_.put(code_length_bits[c.symbol], code_length_lengths[c.symbol]);
        if (code_length_extra_bits[c.symbol]) bits_.put(c.extra, code_length_extra_bits[c.symbol]);
      }
      write_tokens(tokens, dynamic_lengths.data(), 286, dynamic_lengths.data() + 286);
    }
  }

  // Pads the last byte with zeros.
  void finish() { bits_.align(); }

 private:
  static void ensure_two_used(std::uint32_t* frequency, unsigned count) {
    unsigned used = 0;
    for (unsigned s = 0; s < count; ++s) used += frequency[s] != 0;
    for (unsigned s = 0; s < count && used < 2; ++s)
      if (frequency[s] == 0) {
        frequency[s] = 1;
        ++used;
      }
  }

  void write_stored(const std::uint8_t* data, std::size_t size, bool final) {
    std::size_t done = 0;
    do {
      const std::size_t n = size - done < 65535 ? size - done : 65535;
      const bool last = done + n == size;
      bits_.put(final && last ? 1u : 0u, 1);
      bits_.put(0, 2);
      bits_.align();
      bits_.put(static_cast<std::uint32_t>(n), 16);
      bits_.put(static_cast<std::uint32_t>(~n & 0xFFFFu), 16);
      bits_.out.insert(bits_.out.end(), data + done, data + done + n);  // byte-aligned here
      done += n;
    } while (done < size);
  }

  void write_tokens(const std::vector<DeflateToken>& tokens, const std::uint8_t* literal_lengths,
                    unsigned literal_count, const std::uint8_t* distance_lengths) {
    std::array<std::uint16_t, 288> literal_codes{};
    std::array<std::uint16_t, 30> distance_codes{};
    canonical_codes(literal_lengths, literal_count, literal_codes.data());
    canonical_codes(distance_lengths, 30, distance_codes.data());
    for (const DeflateToken& t : tokens) {
      if (t.distance == 0) {
        bits_.put(literal_codes[t.length], literal_lengths[t.length]);
        continue;
      }
      const unsigned l = deflate_length_symbol(t.length);
      bits_.put(literal_codes[l], literal_lengths[l]);
      if (length_extra[l - 257]) bits_.put(t.length - length_base[l - 257], length_extra[l - 257]);
      const unsigned d = deflate_distance_symbol(t.distance);
      bits_.put(distance_codes[d], distance_lengths[d]);
      if (distance_extra[d]) bits_.put(t.distance - distance_base[d], distance_extra[d]);
    }
    bits_.put(literal_codes[256], literal_lengths[256]);
  }

  BitWriter bits_;
};

}  // namespace detail

// Compresses `size` bytes into a raw DEFLATE stream (RFC 1951). LZ77 over a 32 KiB window finds
// matches through hash chains of three-byte prefixes (one step of lazy matching, as RFC 1951,
// section 4 suggests); each block of up to 16384 tokens is written stored, with the fixed
// Huffman code or with its own dynamic code, whichever is smallest.
inline std::vector<std::uint8_t> deflate_compress(const std::uint8_t* data, std::size_t size) {
  using detail::DeflateToken;
  constexpr std::size_t window = 32768;
  constexpr std::size_t window_mask = window - 1;
  constexpr unsigned hash_bits = 15;
  constexpr unsigned max_chain = 64;        // candidates tried per position
  constexpr unsigned nice_length = 128;     // a match this long ends the search
  constexpr unsigned lazy_below = 32;       // shorter matches are checked against the next position
  constexpr std::size_t block_tokens = 16384;

  std::vector<std::uint8_t> out;
  out.reserve(size / 2 + 64);
  detail::DeflateBlockWriter writer(out);
  // head[h]: 1 + the latest position whose three bytes hash to h (0: none); prev[p % window]:
  // 1 + the position before p with the same hash. Positions more than a window back are never
  // followed, so the masked slots are not read after they are reused.
  std::vector<std::size_t> head(std::size_t(1) << hash_bits, 0);
  std::vector<std::size_t> prev(window, 0);

  const auto hash_at = [&](std::size_t p) {
    const std::uint32_t v = std::uint32_t(data[p]) | (std::uint32_t(data[p + 1]) << 8) |
                            (std::uint32_t(data[p + 2]) << 16);
    return static_cast<std::size_t>((v * 2654435761u) >> (32 - hash_bits));
  };
  const auto insert = [&](std::size_t p) {
    if (p + 2 >= size) return;
    const std::size_t h = hash_at(p);
    prev[p & window_mask] = head[h];
    head[h] = p + 1;
  };
  struct Match {
    unsigned length = 0;
    unsigned distance = 0;
  };
  const auto longest_match = [&](std::size_t p) {
    Match best;
    if (p + 2 >= size) return best;
    const unsigned limit = static_cast<unsigned>(size - p < 258 ? size - p : 258);
    unsigned best_length = 2;
    std::size_t candidate = head[hash_at(p)];
    for (unsigned chain = 0; candidate != 0 && chain < max_chain; ++chain) {
      const std::size_t c = candidate - 1;
      if (p - c > window) break;
      // The byte that would lengthen the best match decides most candidates at once.
      if (data[c + best_length] == data[p + best_length] && data[c] == data[p]) {
        unsigned length = 0;
        while (length < limit && data[c + length] == data[p + length]) ++length;
        if (length > best_length) {
          best_length = length;
          best.length = length;
          best.distance = static_cast<unsigned>(p - c);
          if (length >= nice_length || length == limit) break;
        }
      }
      const std::size_t next = prev[c & window_mask];
      if (next == 0 || next - 1 >= c) break;
      candidate = next;
    }
    return best;
  };

  std::vector<DeflateToken> tokens;
  tokens.reserve(block_tokens + 2);
  std::size_t block_begin = 0;
  std::size_t p = 0;
  while (p < size) {
    Match m = longest_match(p);
    insert(p);
    if (m.length < 3) {
      tokens.push_back({data[p], 0});
      ++p;
    } else {
      // Lazy step: when the next position starts a longer match, this byte goes out as a literal.
      while (m.length < lazy_below && p + 1 < size) {
        const Match next = longest_match(p + 1);
        if (next.length <= m.length) break;
        tokens.push_back({data[p], 0});
        ++p;
        insert(p);
        m = next;
      }
      tokens.push_back({static_cast<std::uint16_t>(m.length), static_cast<std::uint16_t>(m.distance)});
      for (std::size_t q = p + 1; q < p + m.length; ++q) insert(q);
      p += m.length;
    }
    if (tokens.size() >= block_tokens && p < size) {
      writer.write(tokens, data, block_begin, p, false);
      tokens.clear();
      block_begin = p;
    }
  }
  writer.write(tokens, data, block_begin, size, true);
  writer.finish();
  return out;
}

// Compresses `size` bytes into a zlib stream (RFC 1950): the header 78 9c (DEFLATE, 32 KiB window,
// default level), the DEFLATE stream of deflate_compress, and the Adler-32 of the data.
inline std::vector<std::uint8_t> zlib_compress(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> out;
  const unsigned cmf = 0x78;   // CM = 8 (deflate), CINFO = 7 (window 2^(7+8))
  unsigned flg = 0x80;         // FLEVEL = 2, FDICT = 0
  flg += (31 - (cmf * 256 + flg) % 31) % 31;  // FCHECK: CMF * 256 + FLG is a multiple of 31
  out.push_back(static_cast<std::uint8_t>(cmf));
  out.push_back(static_cast<std::uint8_t>(flg));
  const std::vector<std::uint8_t> body = deflate_compress(data, size);
  out.insert(out.end(), body.begin(), body.end());
  const std::uint32_t adler = adler32(data, size);
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(adler >> shift));
  return out;
}

namespace detail {

// The Paeth predictor (PNG specification, 9.4): whichever of left, up and up-left is closest to
// left + up - up_left, ties going to left, then up.
inline std::uint8_t paeth_predictor(int left, int up, int up_left) {
  const int p = left + up - up_left;
  const int to_left = p > left ? p - left : left - p;
  const int to_up = p > up ? p - up : up - p;
  const int to_up_left = p > up_left ? p - up_left : up_left - p;
  if (to_left <= to_up && to_left <= to_up_left) return static_cast<std::uint8_t>(left);
  if (to_up <= to_up_left) return static_cast<std::uint8_t>(up);
  return static_cast<std::uint8_t>(up_left);
}

// Checks the image geometry for png_bytes; returns the size of the filtered image data,
// height * (1 + width * channels) bytes.
inline std::size_t png_checked_size(const char* op, int width, int height, int channels) {
  const std::string what = "width " + std::to_string(width) + ", height " + std::to_string(height) +
                           ", channels " + std::to_string(channels);
  if (width <= 0 || height <= 0)
    throw ValueError(std::string("kiln::io::") + op + ": width and height must be positive (got " + what + ")");
  if (channels != 1 && channels != 3 && channels != 4)
    throw ValueError(std::string("kiln::io::") + op +
                     ": channels must be 1 (gray), 3 (RGB) or 4 (RGBA) (got " + what + ")");
  // Bytes must be countable in std::ptrdiff_t, the largest object size.
  constexpr std::size_t largest = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max());
  const std::size_t row = std::size_t(width) * std::size_t(channels);  // < 2^33: no overflow
  if (row + 1 > largest / std::size_t(height))
    throw ValueError(std::string("kiln::io::") + op + ": the image is too large: height * (1 + width * "
                     "channels) bytes overflow (got " + what + ")");
  return (row + 1) * std::size_t(height);
}

// The filtered image data (PNG specification, 9.2-9.4): each row led by its filter type, chosen
// per row as the one whose output has the smallest sum of absolute values of the bytes read as
// signed (the heuristic of the PNG specification, 12.8); ties go to the lower type.
inline std::vector<std::uint8_t> png_filter_rows(const std::uint8_t* pixels, int width, int height,
                                                 int channels) {
  const std::size_t row = std::size_t(width) * std::size_t(channels);
  const std::size_t bpp = static_cast<std::size_t>(channels);
  std::vector<std::uint8_t> out((row + 1) * std::size_t(height));
  std::vector<std::uint8_t> candidates(5 * row);
  const std::vector<std::uint8_t> zero_row(row, 0);
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* current = pixels + std::size_t(y) * row;
    const std::uint8_t* above = y > 0 ? current - row : zero_row.data();
    std::uint64_t best_sum = std::numeric_limits<std::uint64_t>::max();
    int best = 0;
    for (int type = 0; type < 5; ++type) {
      std::uint8_t* f = candidates.data() + std::size_t(type) * row;
      std::uint64_t sum = 0;
      for (std::size_t i = 0; i < row; ++i) {
        const int left = i >= bpp ? current[i - bpp] : 0;
        const int up = above[i];
        const int up_left = i >= bpp ? above[i - bpp] : 0;
        int predicted = 0;
        switch (type) {
          case 1: predicted = left; break;
          case 2: predicted = up; break;
          case 3: predicted = (left + up) >> 1; break;
          case 4: predicted = paeth_predictor(left, up, up_left); break;
          default: break;
        }
        const auto v = static_cast<std::uint8_t>(current[i] - predicted);
        f[i] = v;
        sum += v < 128 ? v : 256u - v;
      }
      if (sum < best_sum) {
        best_sum = sum;
        best = type;
      }
    }
    std::uint8_t* destination = out.data() + std::size_t(y) * (row + 1);
    destination[0] = static_cast<std::uint8_t>(best);
    std::copy_n(candidates.data() + std::size_t(best) * row, row, destination + 1);
  }
  return out;
}

inline void append_be32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFFu));
}

// Appends a chunk: length, type, data, and the CRC-32 of type and data (PNG specification, 5.3).
inline void append_png_chunk(std::string& out, const char (&type)[5], const std::uint8_t* data, std::size_t size) {
  append_be32(out, static_cast<std::uint32_t>(size));
  out.append(type, 4);
  if (size) out.append(reinterpret_cast<const char*>(data), size);
  std::uint32_t crc = crc32(reinterpret_cast<const std::uint8_t*>(type), 4);
  crc = crc32(data, size, crc);
  append_be32(out, crc);
}

// The largest IDAT chunk png_bytes writes; a longer zlib stream is split over several.
inline constexpr std::size_t png_idat_bytes = 65536;

}  // namespace detail

// A PNG file in memory: `pixels` holds height rows of width * channels bytes (channels 1 gray,
// 3 RGB, 4 RGBA; 8 bits per sample). Signature, IHDR, IDAT chunks of at most 64 KiB holding the
// zlib-compressed filtered rows, IEND. Throws ValueError for non-positive sizes, other channel
// counts, sizes whose byte count overflows, or null pixels.
inline std::string png_bytes(const std::uint8_t* pixels, int width, int height, int channels) {
  detail::png_checked_size("png_bytes", width, height, channels);
  if (pixels == nullptr)
    throw ValueError("kiln::io::png_bytes: pixels is null (width " + std::to_string(width) + ", height " +
                     std::to_string(height) + ", channels " + std::to_string(channels) + ")");
  const std::vector<std::uint8_t> filtered = detail::png_filter_rows(pixels, width, height, channels);
  const std::vector<std::uint8_t> compressed = zlib_compress(filtered.data(), filtered.size());

  std::string out("\x89PNG\r\n\x1a\n", 8);
  std::uint8_t header[13] = {};
  for (int i = 0; i < 4; ++i) {
    header[i] = static_cast<std::uint8_t>(static_cast<std::uint32_t>(width) >> (24 - 8 * i));
    header[4 + i] = static_cast<std::uint8_t>(static_cast<std::uint32_t>(height) >> (24 - 8 * i));
  }
  header[8] = 8;                                              // bit depth
  header[9] = channels == 1 ? 0 : channels == 3 ? 2 : 6;      // colour type: gray, RGB, RGBA
  // header[10..12]: compression 0 (deflate), filter method 0 (adaptive), interlace 0 (none).
  out.reserve(8 + 25 + compressed.size() + 12 * (compressed.size() / detail::png_idat_bytes + 2));
  detail::append_png_chunk(out, "IHDR", header, sizeof header);
  for (std::size_t at = 0; at < compressed.size(); at += detail::png_idat_bytes) {
    const std::size_t n = std::min(detail::png_idat_bytes, compressed.size() - at);
    detail::append_png_chunk(out, "IDAT", compressed.data() + at, n);
  }
  detail::append_png_chunk(out, "IEND", nullptr, 0);
  return out;
}

// The PNG of `image`; also checks that image.pixels holds width * height * channels bytes.
inline std::string png_bytes(const Image& image) {
  const std::size_t filtered = detail::png_checked_size("png_bytes", image.width, image.height, image.channels);
  const std::size_t expected = filtered - std::size_t(image.height);
  if (image.pixels.size() != expected)
    throw ValueError("kiln::io::png_bytes: an image of width " + std::to_string(image.width) + ", height " +
                     std::to_string(image.height) + " and " + std::to_string(image.channels) +
                     " channel(s) needs " + std::to_string(expected) + " bytes of pixels, got " +
                     std::to_string(image.pixels.size()));
  return png_bytes(image.pixels.data(), image.width, image.height, image.channels);
}

// Writes png_bytes(...) to `path` atomically (kiln::io::write_file_atomic: a temporary file,
// fsync, rename); throws FileError when the file cannot be written.
inline void write_png(const std::filesystem::path& path, const std::uint8_t* pixels, int width, int height,
                      int channels) {
  write_file_atomic(path.string(), png_bytes(pixels, width, height, channels));
}

inline void write_png(const std::filesystem::path& path, const Image& image) {
  write_file_atomic(path.string(), png_bytes(image));
}

// Tiles images[N, C, H, W] (C 1 or 3; any strides) into one image of `columns` cells per row,
// ceil(N / columns) rows, and `padding` pixels of `pad_value` around and between the cells, as
// torchvision's make_grid lays them out: width columns * (W + padding) + padding, height
// rows * (H + padding) + padding. Cells past the last image are left as padding. Values map
// linearly from [lo, hi] to [0, 255], clamped, rounded to nearest (NaN gives 0). The result has
// C channels (gray or RGB). Throws ShapeError for another rank or channel count, ValueError for
// columns < 1, padding < 0, hi <= lo or a grid larger than INT_MAX pixels a side.
template <class T>
Image image_grid(const Tensor<T, cpu>& images, int columns, int padding = 2, double lo = 0.0,
                 double hi = 1.0, std::uint8_t pad_value = 0) {
  const char* op = "image_grid";
  if (!images.defined()) throw_value_error(op, "the tensor is undefined");
  const Shape& shape = images.shape();
  if (shape.ndim != 4) throw_shape_error(op, "expected images of shape [N, C, H, W]", shape);
  if (shape[1] != 1 && shape[1] != 3)
    throw_shape_error(op, "expected 1 (gray) or 3 (RGB) channels in dimension 1 of [N, C, H, W]", shape);
  if (shape[0] == 0 || shape[2] == 0 || shape[3] == 0)
    throw_shape_error(op, "expected at least one image of at least one pixel", shape);
  if (columns < 1) throw_value_error(op, "columns must be at least 1, got " + std::to_string(columns));
  if (padding < 0) throw_value_error(op, "padding must be non-negative, got " + std::to_string(padding));
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi))
    throw_value_error(op, "expected finite lo < hi, got lo " + std::to_string(lo) + ", hi " + std::to_string(hi));

  const std::int64_t n = shape[0], c = shape[1], h = shape[2], w = shape[3];
  const std::int64_t rows = (n + columns - 1) / columns;
  // Each factor is below 2^63 / 2^31, so the products are exact before the comparison.
  constexpr std::int64_t int_max = std::numeric_limits<int>::max();
  if (w > int_max || h > int_max || rows > int_max ||
      std::int64_t(columns) * (w + padding) + padding > int_max || rows * (h + padding) + padding > int_max)
    throw_shape_error(op, "the grid of " + std::to_string(columns) + " columns is larger than " +
                              std::to_string(int_max) + " pixels a side",
                      shape);
  Image out;
  out.width = static_cast<int>(std::int64_t(columns) * (w + padding) + padding);
  out.height = static_cast<int>(rows * (h + padding) + padding);
  out.channels = static_cast<int>(c);
  out.pixels.assign(std::size_t(out.width) * std::size_t(out.height) * std::size_t(c), pad_value);

  const double scale = 255.0 / (hi - lo);
  const T* base = images.data();
  const Shape& stride = images.strides();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t x0 = padding + (i % columns) * (w + padding);
    const std::int64_t y0 = padding + (i / columns) * (h + padding);
    for (std::int64_t y = 0; y < h; ++y)
      for (std::int64_t x = 0; x < w; ++x)
        for (std::int64_t k = 0; k < c; ++k) {
          const double v =
              (static_cast<double>(base[i * stride[0] + k * stride[1] + y * stride[2] + x * stride[3]]) - lo) * scale;
          std::uint8_t byte = 0;
          if (v >= 255.0) byte = 255;
          else if (v > 0.0) byte = static_cast<std::uint8_t>(std::floor(v + 0.5));  // NaN fails v > 0
          out.pixels[(std::size_t(y0 + y) * std::size_t(out.width) + std::size_t(x0 + x)) * std::size_t(c) +
                     std::size_t(k)] = byte;
        }
  }
  return out;
}

}  // namespace kiln::io
