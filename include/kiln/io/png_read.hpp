// kiln/io/png_read.hpp — a bounded PNG decoder: gray, gray+alpha, RGB, RGBA and palette images of
// 1, 2, 4, 8 or 16 bits per sample (non-interlaced), every chunk CRC, the zlib header and Adler-32
// checked, decoded to 8-bit kiln::io::Image (gray → 1 channel, gray+alpha → 4, RGB → 3, RGBA and
// palettes with transparency → 4; 16-bit samples keep their high byte); read_png reads a file.
// Builds on io/gzip.hpp (inflate, crc32, FormatError), io/png.hpp (Image, adler32, the Paeth
// predictor) and io/safetensors.hpp (read_file_bytes).
#pragma once

#include <kiln/io/gzip.hpp>
#include <kiln/io/png.hpp>
#include <kiln/io/safetensors.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kiln::io {

// The largest image decode_png accepts by default: 2^28 bytes of decoded samples (e.g. 8192 ×
// 8192 RGBA). Larger images throw FormatError before any memory is allocated for them.
inline constexpr std::size_t png_default_max_bytes = std::size_t(1) << 28;

namespace detail {

inline std::uint32_t load_be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}

// Undoes the row filters (PNG specification, 9.2) in place over `height` rows of `row_bytes`
// bytes, each led by its filter-type byte; `bpp` is the filter unit (bytes per complete pixel,
// at least 1). Returns the unfiltered rows without the type bytes.
inline std::vector<std::uint8_t> png_unfilter(const std::vector<std::uint8_t>& data, std::size_t row_bytes,
                                              std::size_t height, std::size_t bpp, const std::string& name) {
  std::vector<std::uint8_t> out(row_bytes * height);
  for (std::size_t y = 0; y < height; ++y) {
    const std::uint8_t type = data[y * (row_bytes + 1)];
    const std::uint8_t* in = data.data() + y * (row_bytes + 1) + 1;
    std::uint8_t* row = out.data() + y * row_bytes;
    const std::uint8_t* up = y ? row - row_bytes : nullptr;
    for (std::size_t x = 0; x < row_bytes; ++x) {
      const int a = x >= bpp ? row[x - bpp] : 0;
      const int b = up ? up[x] : 0;
      const int c = (up && x >= bpp) ? up[x - bpp] : 0;
      int predicted;
      switch (type) {
        case 0: predicted = 0; break;
        case 1: predicted = a; break;
        case 2: predicted = b; break;
        case 3: predicted = (a + b) / 2; break;
        case 4: predicted = paeth_predictor(a, b, c); break;
        default:
          throw_format_error("io::decode_png", name, 0,
                             "row " + std::to_string(y) + " has filter type " + std::to_string(type) +
                                 " (PNG defines 0 to 4)");
      }
      row[x] = static_cast<std::uint8_t>(in[x] + predicted);
    }
  }
  return out;
}

}  // namespace detail

// Decodes the PNG file held in `data` (PNG specification, ISO/IEC 15948). `name` (a file name)
// leads every error message; errors are FormatError naming the byte offset and the problem:
// a bad signature, a chunk running past the end, a chunk CRC mismatch, a missing or misplaced
// IHDR, unsupported geometry (interlacing, bit depth / colour type pairs the specification does
// not allow), a palette index past the palette, a bad zlib header or Adler-32, decompressed data of
// the wrong size, an unknown critical chunk, or an image larger than `max_bytes` decoded bytes.
inline Image decode_png(const std::uint8_t* data, std::size_t size, const std::string& name = {},
                        std::size_t max_bytes = png_default_max_bytes) {
  using detail::load_be32;
  using detail::throw_format_error;
  const char* op = "io::decode_png";
  static constexpr std::uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (size < 8 || std::memcmp(data, signature, 8) != 0)
    throw_format_error(op, name, 0, "not a PNG file (the 8-byte signature 89 50 4E 47 0D 0A 1A 0A is missing)");

  std::uint32_t width = 0, height = 0;
  int bit_depth = 0, colour_type = -1;
  bool have_header = false, have_end = false;
  std::vector<std::uint8_t> palette;  // RGBA entries
  std::size_t palette_entries = 0;
  std::vector<std::uint8_t> zlib;
  bool idat_done = false, idat_seen = false;
  std::size_t at = 8;
  while (!have_end) {
    if (size - at < 12) throw_format_error(op, name, at, "the file ends inside a chunk header (no IEND chunk)");
    const std::uint32_t length = load_be32(data + at);
    const std::uint8_t* type = data + at + 4;
    if (length > 0x7fffffffu || std::size_t(length) > size - at - 12)
      throw_format_error(op, name, at, "chunk length " + std::to_string(length) + " runs past the end of the file (" +
                                           std::to_string(size) + " bytes)");
    const std::string type_name(reinterpret_cast<const char*>(type), 4);
    for (char ch : type_name)
      if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')))
        throw_format_error(op, name, at + 4, "chunk type is not four ASCII letters");
    const std::uint8_t* body = data + at + 8;
    const std::uint32_t stored_crc = load_be32(body + length);
    const std::uint32_t crc = crc32(body, length, crc32(type, 4));
    if (crc != stored_crc)
      throw_format_error(op, name, at + 8 + length,
                         "CRC mismatch in chunk " + type_name + " (stored " + detail::hex32(stored_crc) + ", computed " +
                             detail::hex32(crc) + ")");
    if (!have_header && type_name != "IHDR") throw_format_error(op, name, at, "the first chunk is " + type_name + ", not IHDR");
    if (idat_seen && type_name != "IDAT") idat_done = true;
    if (type_name == "IHDR") {
      if (have_header) throw_format_error(op, name, at, "a second IHDR chunk");
      if (length != 13) throw_format_error(op, name, at, "IHDR has " + std::to_string(length) + " bytes, not 13");
      width = load_be32(body);
      height = load_be32(body + 4);
      bit_depth = body[8];
      colour_type = body[9];
      if (width == 0 || height == 0 || width > 0x7fffffffu || height > 0x7fffffffu)
        throw_format_error(op, name, at + 8, "image size " + std::to_string(width) + "x" + std::to_string(height) +
                                                 " (each side must be 1 to 2^31 - 1)");
      const bool allowed = (colour_type == 0 && (bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8 || bit_depth == 16)) ||
                           (colour_type == 3 && (bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8)) ||
                           ((colour_type == 2 || colour_type == 4 || colour_type == 6) && (bit_depth == 8 || bit_depth == 16));
      if (!allowed)
        throw_format_error(op, name, at + 16, "colour type " + std::to_string(colour_type) + " with bit depth " +
                                                  std::to_string(bit_depth) + " is not a valid PNG combination");
      if (body[10] != 0 || body[11] != 0)
        throw_format_error(op, name, at + 18, "unknown compression or filter method (only 0 is defined)");
      if (body[12] == 1) throw_format_error(op, name, at + 20, "interlaced (Adam7) PNGs are not supported; save it non-interlaced");
      if (body[12] != 0) throw_format_error(op, name, at + 20, "unknown interlace method " + std::to_string(body[12]));
      have_header = true;
    } else if (type_name == "PLTE") {
      if (length == 0 || length % 3 != 0 || length / 3 > 256)
        throw_format_error(op, name, at, "PLTE has " + std::to_string(length) + " bytes (a multiple of 3, at most 768)");
      palette_entries = length / 3;
      palette.assign(palette_entries * 4, 255);
      for (std::size_t i = 0; i < palette_entries; ++i)
        for (int k = 0; k < 3; ++k) palette[4 * i + k] = body[3 * i + k];
    } else if (type_name == "tRNS") {
      if (colour_type == 3) {
        if (length > palette_entries) throw_format_error(op, name, at, "tRNS has more entries than the palette");
        for (std::size_t i = 0; i < length; ++i) palette[4 * i + 3] = body[i];
      }
      // Gray/RGB transparency keys are ignored: the image decodes without alpha.
    } else if (type_name == "IDAT") {
      if (idat_done) throw_format_error(op, name, at, "IDAT chunks are not consecutive");
      idat_seen = true;
      zlib.insert(zlib.end(), body, body + length);
    } else if (type_name == "IEND") {
      have_end = true;
    } else if ((type_name[0] & 0x20) == 0) {
      throw_format_error(op, name, at, "unknown critical chunk " + type_name);
    }
    at += 12 + std::size_t(length);
  }
  if (!idat_seen) throw_format_error(op, name, at, "no IDAT chunk");
  if (colour_type == 3 && palette_entries == 0) throw_format_error(op, name, at, "a palette image without a PLTE chunk");

  const int samples = colour_type == 0 ? 1 : colour_type == 2 ? 3 : colour_type == 3 ? 1 : colour_type == 4 ? 2 : 4;
  const int out_channels = colour_type == 0 ? 1 : colour_type == 2 ? 3 : 4;
  const std::size_t bits_per_pixel = std::size_t(samples) * std::size_t(bit_depth);
  const std::size_t w = width, h = height;
  // Bounded before allocating: every size below is at most max_bytes (+ one byte per row).
  if (w > max_bytes / h / std::size_t(out_channels) || (w * bits_per_pixel + 7) / 8 > max_bytes / h)
    throw_format_error(op, name, 16, "image " + std::to_string(w) + "x" + std::to_string(h) + " decodes to more than " +
                                         std::to_string(max_bytes) + " bytes");
  const std::size_t row_bytes = (w * bits_per_pixel + 7) / 8;
  const std::size_t expected = (row_bytes + 1) * h;

  // zlib (RFC 1950): CMF, FLG, DEFLATE data, Adler-32 of the decompressed bytes.
  if (zlib.size() < 6) throw_format_error(op, name, 0, "the IDAT data is too short for a zlib stream");
  if ((zlib[0] & 0x0f) != 8 || (zlib[0] >> 4) > 7 || ((unsigned(zlib[0]) << 8) | zlib[1]) % 31 != 0)
    throw_format_error(op, name, 0, "the IDAT data does not start with a valid zlib header");
  if (zlib[1] & 0x20) throw_format_error(op, name, 0, "the zlib stream asks for a preset dictionary");
  std::size_t consumed = 0;
  std::vector<std::uint8_t> filtered;
  try {
    filtered = inflate(zlib.data() + 2, zlib.size() - 2, expected, &consumed);
  } catch (const FormatError& e) {
    throw FormatError("kiln::" + std::string(op) + ": " + (name.empty() ? std::string() : name + ": ") +
                      "the compressed image data is damaged or larger than the image (" + e.what() + ")");
  }
  if (filtered.size() != expected)
    throw_format_error(op, name, 0, "the image data decompresses to " + std::to_string(filtered.size()) +
                                        " bytes; a " + std::to_string(w) + "x" + std::to_string(h) + " image needs " +
                                        std::to_string(expected));
  if (zlib.size() - 2 - consumed < 4) throw_format_error(op, name, 0, "the zlib stream lacks its Adler-32 checksum");
  const std::uint32_t stored_adler = load_be32(zlib.data() + 2 + consumed);
  if (stored_adler != adler32(filtered.data(), filtered.size()))
    throw_format_error(op, name, 0, "Adler-32 mismatch in the image data");

  const std::vector<std::uint8_t> rows =
      detail::png_unfilter(filtered, row_bytes, h, std::max<std::size_t>(1, bits_per_pixel / 8), name);
  Image image;
  image.width = static_cast<int>(w);
  image.height = static_cast<int>(h);
  image.channels = out_channels;
  image.pixels.resize(w * h * std::size_t(out_channels));
  std::uint8_t* out = image.pixels.data();
  for (std::size_t y = 0; y < h; ++y) {
    const std::uint8_t* row = rows.data() + y * row_bytes;
    for (std::size_t x = 0; x < w; ++x) {
      // Sample s of pixel x as 8 bits.
      auto sample = [&](int s) -> unsigned {
        if (bit_depth == 8) return row[x * std::size_t(samples) + std::size_t(s)];
        if (bit_depth == 16) return row[2 * (x * std::size_t(samples) + std::size_t(s))];
        const std::size_t bit = x * std::size_t(bit_depth);  // samples == 1 here
        const unsigned v = (row[bit / 8] >> (8 - bit_depth - int(bit % 8))) & ((1u << bit_depth) - 1);
        return colour_type == 3 ? v : v * 255u / ((1u << bit_depth) - 1);
      };
      std::uint8_t* px = out + (y * w + x) * std::size_t(out_channels);
      if (colour_type == 3) {
        const unsigned index = sample(0);
        if (index >= palette_entries)
          throw_format_error(op, name, 0, "pixel (" + std::to_string(x) + ", " + std::to_string(y) + ") uses palette index " +
                                              std::to_string(index) + " of a " + std::to_string(palette_entries) +
                                              "-entry palette");
        for (int k = 0; k < 4; ++k) px[k] = palette[4 * index + std::size_t(k)];
      } else if (colour_type == 4) {
        px[0] = px[1] = px[2] = static_cast<std::uint8_t>(sample(0));
        px[3] = static_cast<std::uint8_t>(sample(1));
      } else {
        for (int k = 0; k < samples; ++k) px[k] = static_cast<std::uint8_t>(sample(k));
      }
    }
  }
  return image;
}

inline Image decode_png(const std::string& bytes, const std::string& name = {},
                        std::size_t max_bytes = png_default_max_bytes) {
  return decode_png(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), name, max_bytes);
}

// Reads and decodes the PNG file at `path`; errors name the file.
inline Image read_png(const std::string& path, std::size_t max_bytes = png_default_max_bytes) {
  const std::string bytes = read_file_bytes(path);
  return decode_png(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), path, max_bytes);
}

}  // namespace kiln::io
