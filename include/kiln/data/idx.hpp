// kiln/data/idx.hpp — IDX arrays (the MNIST file format): parse_idx checks the header against the
// data and returns the extents, element type and host-order element bytes; read_idx reads a file,
// gzip-compressed or plain. Builds on io/gzip.hpp and core/config.hpp.
#pragma once

#include <kiln/core/config.hpp>
#include <kiln/core/error.hpp>
#include <kiln/io/gzip.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::data {

// Element type codes of the IDX header's third byte.
inline constexpr std::uint8_t idx_uint8 = 0x08;
inline constexpr std::uint8_t idx_int8 = 0x09;
inline constexpr std::uint8_t idx_int16 = 0x0B;
inline constexpr std::uint8_t idx_int32 = 0x0C;
inline constexpr std::uint8_t idx_float32 = 0x0D;
inline constexpr std::uint8_t idx_float64 = 0x0E;

// Bytes per element of an IDX type code; 0 for a code the format does not define.
constexpr std::size_t idx_element_size(std::uint8_t type) {
  switch (type) {
    case idx_uint8:
    case idx_int8: return 1;
    case idx_int16: return 2;
    case idx_int32:
    case idx_float32: return 4;
    case idx_float64: return 8;
    default: return 0;
  }
}

// "uint8", "int16", ... or "unknown".
constexpr const char* idx_type_name(std::uint8_t type) {
  switch (type) {
    case idx_uint8: return "uint8";
    case idx_int8: return "int8";
    case idx_int16: return "int16";
    case idx_int32: return "int32";
    case idx_float32: return "float32";
    case idx_float64: return "float64";
    default: return "unknown";
  }
}

// The IDX type code that holds C++ type T (0 when none does).
template <class T>
constexpr std::uint8_t idx_type_of() {
  if constexpr (std::is_same_v<T, std::uint8_t>) return idx_uint8;
  else if constexpr (std::is_same_v<T, std::int8_t>) return idx_int8;
  else if constexpr (std::is_same_v<T, std::int16_t>) return idx_int16;
  else if constexpr (std::is_same_v<T, std::int32_t>) return idx_int32;
  else if constexpr (std::is_same_v<T, float>) return idx_float32;
  else if constexpr (std::is_same_v<T, double>) return idx_float64;
  else return 0;
}

// An IDX array: extents (outermost first), element type code, and the elements in row-major
// order as bytes in the host's byte order (the file's big-endian values already swapped).
struct IdxArray {
  std::vector<index_t> dims;
  std::uint8_t type = idx_uint8;
  std::vector<std::uint8_t> bytes;

  // Number of elements: the product of the extents.
  index_t numel() const {
    index_t n = 1;
    for (index_t d : dims) n *= d;
    return n;
  }

  // The elements as T, which must be the type the file holds (uint8_t for 0x08, float for 0x0D...).
  template <class T>
  std::vector<T> values() const {
    static_assert(idx_type_of<T>() != 0,
                  "IdxArray::values<T>: T must be uint8_t, int8_t, int16_t, int32_t, float or double");
    if (type != idx_type_of<T>())
      throw ValueError(std::string("kiln::IdxArray::values: the array holds ") + idx_type_name(type) +
                       ", not " + idx_type_name(idx_type_of<T>()));
    std::vector<T> out(bytes.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
};

namespace detail {

// Checks the header of IDX data (the format of LeCun et al.'s MNIST files: 00 00 TYPE NDIM, then
// NDIM big-endian uint32 extents, then the elements, big-endian) and fills all but `bytes`.
// Returns the header length.
inline std::size_t parse_idx_header(const std::uint8_t* data, std::size_t size,
                                    const std::string& name, IdxArray& array) {
  using io::detail::throw_format_error;
  const char* op = "parse_idx";
  if (size < 4)
    throw_format_error(op, name, size,
                       "unexpected end of data in the IDX header (expected 4 bytes 00 00 TYPE NDIM, "
                       "found " + std::to_string(size) + ")");
  if (data[0] != 0 || data[1] != 0)
    throw_format_error(op, name, 0,
                       "expected the IDX magic 00 00, found " + io::detail::hex8(data[0]) + " " +
                           io::detail::hex8(data[1]));
  const std::uint8_t type = data[2];
  const std::size_t element_size = idx_element_size(type);
  if (element_size == 0)
    throw_format_error(op, name, 2,
                       "unknown element type 0x" + io::detail::hex8(type) +
                           " (expected 08 uint8, 09 int8, 0b int16, 0c int32, 0d float32 or "
                           "0e float64)");
  const unsigned ndim = data[3];
  if (ndim < 1 || ndim > static_cast<unsigned>(max_dims))
    throw_format_error(op, name, 3,
                       std::to_string(ndim) + " dimensions (expected 1 to " +
                           std::to_string(max_dims) + ")");
  const std::size_t header = 4 + 4 * std::size_t(ndim);
  if (size < header)
    throw_format_error(op, name, size,
                       "unexpected end of data in the IDX header (" + std::to_string(ndim) +
                           " extents need " + std::to_string(header) + " header bytes, found " +
                           std::to_string(size) + ")");
  array.type = type;
  array.dims.resize(ndim);
  // The payload is what the file has after the header; the extents must multiply to exactly it.
  const std::size_t payload = size - header;
  std::string extents = "[";
  for (unsigned i = 0; i < ndim; ++i) {
    const std::uint8_t* p = data + 4 + 4 * i;
    const std::uint32_t d = (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) |
                            (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
    array.dims[i] = static_cast<index_t>(d);
    extents += (i ? ", " : "") + std::to_string(d);
  }
  extents += "]";
  // The byte count must fit index_t; a zero extent makes it 0 whatever the others say.
  const std::size_t limit = static_cast<std::size_t>(std::numeric_limits<index_t>::max()) / element_size;
  std::size_t product = 1;
  if (std::find(array.dims.begin(), array.dims.end(), index_t(0)) != array.dims.end()) {
    product = 0;
  } else {
    for (index_t d : array.dims) {
      if (product > limit / static_cast<std::size_t>(d))
        throw_format_error(op, name, 4,
                           "extents " + extents + " of " + idx_type_name(type) +
                               " overflow (more than 2^63 bytes); the data holds " +
                               std::to_string(payload / element_size) + " elements");
      product *= static_cast<std::size_t>(d);
    }
  }
  const std::size_t needed = product * element_size;
  if (needed != payload)
    throw_format_error(op, name, header,
                       "extents " + extents + " of " + idx_type_name(type) + " need " +
                           std::to_string(needed) + " bytes of data after the " +
                           std::to_string(header) + "-byte header, found " +
                           std::to_string(payload));
  return header;
}

// Rewrites the big-endian elements of `element_size` bytes in bytes[0, size) in the host's byte
// order (a no-op on a big-endian host).
inline void idx_to_host_order(std::uint8_t* bytes, std::size_t size, std::size_t element_size) {
  if constexpr (std::endian::native == std::endian::little) {
    if (element_size < 2) return;
    for (std::size_t at = 0; size - at >= element_size; at += element_size)
      for (std::size_t low = at, high = at + element_size - 1; low < high; ++low, --high) {
        const std::uint8_t byte = bytes[low];
        bytes[low] = bytes[high];
        bytes[high] = byte;
      }
  }
}

}  // namespace detail

// Parses IDX data, reusing the vector's memory; `name` (a file name) leads every error message.
// Throws io::FormatError for a bad magic, an unknown type, 0 or more than 8 dimensions, extents
// whose product overflows or disagrees with the data size.
inline IdxArray parse_idx(std::vector<std::uint8_t>&& bytes, const std::string& name = {}) {
  IdxArray array;
  const std::size_t header = detail::parse_idx_header(bytes.data(), bytes.size(), name, array);
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(header));
  detail::idx_to_host_order(bytes.data(), bytes.size(), idx_element_size(array.type));
  array.bytes = std::move(bytes);
  return array;
}

inline IdxArray parse_idx(const std::vector<std::uint8_t>& bytes, const std::string& name = {}) {
  IdxArray array;
  const std::size_t header = detail::parse_idx_header(bytes.data(), bytes.size(), name, array);
  array.bytes.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  detail::idx_to_host_order(array.bytes.data(), array.bytes.size(), idx_element_size(array.type));
  return array;
}

// Reads an IDX file, gunzipping it first when it starts with 1f 8b. At most `max_bytes` bytes
// are decompressed.
inline IdxArray read_idx(const std::string& path, std::size_t max_bytes = io::default_max_output) {
  return parse_idx(io::read_maybe_gzip(path, max_bytes), path);
}

}  // namespace kiln::data
