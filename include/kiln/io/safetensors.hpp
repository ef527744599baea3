// kiln/io/safetensors.hpp — safetensors files: SafeTensorsFile reads and validates one (F32, F64,
// F16, BF16 converted to float/double; other dtypes as raw bytes), save_safetensors writes one
// atomically (write_file_atomic), plus exact half-precision conversions.
// Builds on io/json.hpp, core/tensor.hpp, core/bfloat16.hpp and POSIX files (open, fsync, rename).
#pragma once

#include <kiln/core/bfloat16.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/shape.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/io/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kiln::io {

// The operating system refused a file operation (open, read, write, fsync, rename); the
// message names the file and the system's reason.
class FileError : public Error {
 public:
  using Error::Error;
};

// ---------------------------------------------------------------------------------------------
// Files as bytes
// ---------------------------------------------------------------------------------------------

namespace detail {
[[noreturn]] inline void throw_file_error(const char* op, const std::string& what, const std::string& path,
                                          int error_number) {
  throw FileError(std::string("kiln::io::") + op + ": " + what + " '" + path +
                  "': " + std::generic_category().message(error_number));
}
}  // namespace detail

// The whole content of the regular file at `path`. Throws FileError naming the file.
inline std::string read_file_bytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) detail::throw_file_error("read_file_bytes", "cannot open", path, errno);
  struct ::stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    detail::throw_file_error("read_file_bytes", "cannot stat", path, e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FileError("kiln::io::read_file_bytes: '" + path + "' is not a regular file");
  }
  std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ::ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      detail::throw_file_error("read_file_bytes", "cannot read", path, e);
    }
    if (n == 0) break;  // the file shrank while we read it
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  bytes.resize(done);
  return bytes;
}

// Replaces the file at `path` with `bytes` so that readers see either the old file or the whole
// new one, never a part: writes `path + ".tmp"`, fsyncs it, renames it over `path`, then fsyncs
// the directory. On failure the temporary file is removed, `path` is left as it was, and
// FileError names the file and the step that failed.
inline void write_file_atomic(const std::string& path, std::string_view bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) detail::throw_file_error("write_file_atomic", "cannot create the temporary file", tmp, errno);
  const auto give_up = [&](const char* what, int error_number) {
    ::close(fd);
    ::unlink(tmp.c_str());
    detail::throw_file_error("write_file_atomic", what, tmp, error_number);
  };
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ::ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      give_up("cannot write", errno);
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) give_up("cannot fsync", errno);
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    detail::throw_file_error("write_file_atomic", "cannot close", tmp, e);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    detail::throw_file_error("write_file_atomic", ("cannot rename '" + tmp + "' over").c_str(), path, e);
  }
  // Make the rename itself durable (best effort: some file systems refuse to fsync a directory).
  const std::size_t slash = path.find_last_of('/');
  const std::string directory = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dir_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Half precision (IEEE-754 binary16, safetensors "F16") and bfloat16 ("BF16") bits
// ---------------------------------------------------------------------------------------------

// The float with half-precision bits `h`; exact (every half is a float), NaN payloads kept.
// Layout: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits.
constexpr float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float (at most 10 significant bits).
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));  // inf, NaN
  return std::bit_cast<float>(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

// The half nearest to `f`, ties to even; values at or beyond 65520 (halfway between the
// largest half 65504 and 2^16) become infinity; NaN stays NaN (made quiet, sign and top
// payload bits kept).
constexpr std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u)  // NaN
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x1FFu));
  if (magnitude >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520: inf
  const std::uint32_t exponent = magnitude >> 23;  // biased by 127
  if (exponent < 113) {
    // Below 2^-14, the smallest normal half: the result is a subnormal q * 2^-24 (or zero, or
    // the smallest normal when q rounds up to 1024). With the hidden bit m = 1.mantissa * 2^23,
    // the value is m * 2^(exponent - 150), so q = m / 2^(126 - exponent) rounded.
    if (exponent < 102) return sign;  // below 2^-25 (half of the smallest subnormal): zero
    const std::uint32_t m = (magnitude & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126 - exponent;  // 14 ... 24
    std::uint32_t q = m >> shift;
    const std::uint32_t rest = m & ((1u << shift) - 1);
    const std::uint32_t half_way = 1u << (shift - 1);
    if (rest > half_way || (rest == half_way && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  // Normal: rebias the exponent (127 -> 15) and drop 13 mantissa bits, rounding to nearest
  // even; a carry out of the mantissa correctly moves to the next exponent.
  std::uint32_t h = ((exponent - 112) << 10) | ((magnitude >> 13) & 0x3FFu);
  const std::uint32_t rest = magnitude & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

namespace detail {
// `d` narrowed to float rounding to odd: truncate toward zero, and if anything was lost set
// the last mantissa bit. Rounding that result once more to a format with at most 22 mantissa
// bits (half: 10, bfloat16: 7) gives the same answer as rounding `d` directly to that format
// (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
// rounding to odd", IEEE Trans. Computers 2008, Theorem 1: p_float >= p_target + 2).
inline float narrow_to_float_round_to_odd(double d) {
  if (std::isnan(d)) return static_cast<float>(d);
  const float nearest = static_cast<float>(d);
  if (static_cast<double>(nearest) == d) return nearest;
  std::uint32_t u = std::bit_cast<std::uint32_t>(nearest);
  if (std::fabs(static_cast<double>(nearest)) > std::fabs(d)) --u;  // step toward zero (inf -> max)
  return std::bit_cast<float>(u | 1u);
}
}  // namespace detail

// The half nearest to `d`, ties to even (one rounding, not two).
inline std::uint16_t double_to_half_bits(double d) {
  return float_to_half_bits(detail::narrow_to_float_round_to_odd(d));
}
// The bfloat16 nearest to `d`, ties to even (one rounding, not two).
inline std::uint16_t double_to_bfloat16_bits(double d) {
  return kiln::detail::float_to_bfloat16_bits(detail::narrow_to_float_round_to_odd(d));
}

// ---------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------

// The element types of safetensors, in the order of the reference implementation (which
// writes tensors with larger elements first).
enum class DType : unsigned char { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

inline constexpr DType all_dtypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::F8_E5M2, DType::F8_E4M3,
                                       DType::I16,  DType::U16, DType::F16, DType::BF16,    DType::I32,
                                       DType::U32,  DType::F32, DType::F64, DType::I64,     DType::U64};

// "F32", "BF16", ...: the name in the file header.
constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::BOOL: return "BOOL";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
    case DType::F8_E5M2: return "F8_E5M2";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::I16: return "I16";
    case DType::U16: return "U16";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::U32: return "U32";
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::U64: return "U64";
  }
  return "?";
}

// Bytes per element.
constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
    case DType::F8_E5M2:
    case DType::F8_E4M3: return 1;
    case DType::I16:
    case DType::U16:
    case DType::F16:
    case DType::BF16: return 2;
    case DType::I32:
    case DType::U32:
    case DType::F32: return 4;
    case DType::F64:
    case DType::I64:
    case DType::U64: return 8;
  }
  return 0;
}

// The floating types SafeTensorsFile::get converts (F64, F32, F16, BF16).
constexpr bool is_convertible_float(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

// The dtype called `name`; false when there is none.
inline bool parse_dtype(std::string_view name, DType& out) {
  for (DType t : all_dtypes)
    if (name == dtype_name(t)) {
      out = t;
      return true;
    }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

// One tensor's header entry: its dtype, its extents, and where its bytes lie in the data
// buffer (begin, end relative to the buffer, which starts after the header).
struct SafeTensorInfo {
  DType dtype = DType::F32;
  std::vector<index_t> shape;
  std::uint64_t begin = 0, end = 0;

  index_t numel() const {
    index_t n = 1;
    for (index_t d : shape) n *= d;
    return n;
  }
};

namespace detail {

template <class U>
U load_little_endian(const unsigned char* p) {
  static_assert(std::is_unsigned_v<U>);
  if constexpr (std::endian::native == std::endian::little) {
    U v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else {
    U v = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<U>(static_cast<U>(p[i]) << (8 * i));
    return v;
  }
}

template <class U>
void store_little_endian(unsigned char* p, U v) {
  static_assert(std::is_unsigned_v<U>);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, sizeof v);
  } else {
    for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
  }
}

inline std::string shape_text(const std::vector<index_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

inline std::string offsets_text(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

}  // namespace detail

// A safetensors file held in memory and checked when opened:
//   bytes 0-7      N, the header length (unsigned 64-bit little endian), at most 100 MB and
//                  no more than the rest of the file;
//   bytes 8..8+N   a JSON object: for each tensor "name": {"dtype": "F32", "shape": [..],
//                  "data_offsets": [begin, end]}, and optionally "__metadata__": {str: str};
//   the rest       the data buffer; offsets count from its first byte.
// Every entry must have a known dtype, a shape of non-negative integers and offsets inside the
// buffer holding exactly numel * dtype size bytes; no two tensors may share a byte (the buffer
// need not be fully covered). Any violation throws FormatError naming the file, the tensor
// and the byte offset in the file.
class SafeTensorsFile {
 public:
  static constexpr std::uint64_t max_header_bytes = 100'000'000;

  // Reads and checks the file at `path` (FileError when it cannot be read).
  explicit SafeTensorsFile(const std::string& path) : SafeTensorsFile(read_file_bytes(path), path) {}

  // Checks `bytes` as the content of a safetensors file; `source_name` stands for the file in
  // error messages.
  static SafeTensorsFile from_bytes(std::string bytes, std::string source_name = "safetensors bytes") {
    return SafeTensorsFile(std::move(bytes), std::move(source_name));
  }

  // The file's path (or the name given to from_bytes).
  const std::string& source() const { return source_; }
  // Number of tensors.
  std::size_t size() const { return tensors_.size(); }
  // Tensor names in the order of the header.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& t : tensors_) out.push_back(t.first);
    return out;
  }
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }
  // The header's "__metadata__" (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // File offset of the data buffer (8 + header length).
  std::uint64_t data_offset() const { return data_offset_; }

  // The header entry of `name`; throws ValueError listing some names when there is no such tensor.
  const SafeTensorInfo& info(std::string_view name) const { return tensors_[position(name)].second; }
  DType dtype(std::string_view name) const { return info(name).dtype; }
  // The tensor's extents; throws ShapeError when it has more than max_dims dimensions.
  Shape shape(std::string_view name) const {
    const SafeTensorInfo& t = info(name);
    if (t.shape.size() > static_cast<std::size_t>(max_dims))
      throw ShapeError("kiln::io::SafeTensorsFile: " + source_ + ": tensor '" + std::string(name) + "' has " +
                       std::to_string(t.shape.size()) + " dimensions; kiln tensors have at most " +
                       std::to_string(max_dims));
    return Shape::from(t.shape.data(), static_cast<int>(t.shape.size()));
  }
  // The tensor's bytes as stored (little endian), for any dtype.
  std::string_view raw(std::string_view name) const {
    const SafeTensorInfo& t = info(name);
    return std::string_view(bytes_).substr(static_cast<std::size_t>(data_offset_ + t.begin),
                                           static_cast<std::size_t>(t.end - t.begin));
  }

  // The tensor as a new contiguous Tensor<T> on the CPU (T is float or double), converted from
  // F64, F32, F16 or BF16: F16 and BF16 exactly, F64 to float rounded to nearest even. Other
  // dtypes throw ValueError (read them with raw()). Needs Backend<cpu> (kiln/kiln.hpp).
  template <class T>
  Tensor<T> get(std::string_view name) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "SafeTensorsFile::get<T> converts to float or double; use raw() for other element types");
    const SafeTensorInfo& t = info(name);
    if (!is_convertible_float(t.dtype))
      throw ValueError("kiln::io::SafeTensorsFile::get: " + source_ + ": tensor '" + std::string(name) +
                       "' holds " + dtype_name(t.dtype) +
                       " elements; get<T> converts F64, F32, F16 and BF16 only (use raw() for the bytes)");
    Tensor<T> out = Tensor<T>::uninitialized(shape(name));
    T* dst = out.data();
    const auto* src = reinterpret_cast<const unsigned char*>(bytes_.data()) + data_offset_ + t.begin;
    const std::size_t n = static_cast<std::size_t>(t.numel());
    switch (t.dtype) {
      case DType::F64:
        for (std::size_t i = 0; i < n; ++i)
          dst[i] = static_cast<T>(std::bit_cast<double>(detail::load_little_endian<std::uint64_t>(src + 8 * i)));
        break;
      case DType::F32:
        for (std::size_t i = 0; i < n; ++i)
          dst[i] = static_cast<T>(std::bit_cast<float>(detail::load_little_endian<std::uint32_t>(src + 4 * i)));
        break;
      case DType::F16:
        for (std::size_t i = 0; i < n; ++i)
          dst[i] = static_cast<T>(half_bits_to_float(detail::load_little_endian<std::uint16_t>(src + 2 * i)));
        break;
      case DType::BF16:
        for (std::size_t i = 0; i < n; ++i)
          dst[i] = static_cast<T>(static_cast<float>(
              bfloat16::from_bits(detail::load_little_endian<std::uint16_t>(src + 2 * i))));
        break;
      default: break;
    }
    return out;
  }

 private:
  std::string source_;
  std::string bytes_;
  std::uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, SafeTensorInfo>> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;

  SafeTensorsFile(std::string bytes, std::string source) : source_(std::move(source)), bytes_(std::move(bytes)) {
    parse();
  }

  std::size_t position(std::string_view name) const {
    const auto it = index_.find(name);
    if (it != index_.end()) return it->second;
    std::string known;
    for (std::size_t i = 0; i < tensors_.size() && i < 8; ++i) known += (i ? ", '" : "'") + tensors_[i].first + "'";
    if (tensors_.size() > 8) known += ", ... (" + std::to_string(tensors_.size()) + " in all)";
    throw ValueError("kiln::io::SafeTensorsFile: " + source_ + ": no tensor named '" + std::string(name) + "'" +
                     (tensors_.empty() ? std::string(" (the file holds no tensors)") : " (it has " + known + ")"));
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError("kiln::io::SafeTensorsFile: " + source_ + ": " + what);
  }
  // "tensor 'x' (header entry at file byte B)"
  std::string entry_text(const std::string& name, const Json& value) const {
    return "tensor '" + name + "' (header entry at file byte " + std::to_string(8 + value.source_offset()) + ")";
  }

  void parse() {
    const std::uint64_t file_size = bytes_.size();
    if (file_size < 8)
      fail("the file is " + std::to_string(file_size) +
           " bytes long; a safetensors file starts with an 8-byte header length");
    const std::uint64_t header_length =
        detail::load_little_endian<std::uint64_t>(reinterpret_cast<const unsigned char*>(bytes_.data()));
    if (header_length > max_header_bytes)
      fail("header length " + std::to_string(header_length) + " (file bytes 0-7) is larger than the limit of " +
           std::to_string(max_header_bytes) + " bytes");
    if (header_length > file_size - 8)
      fail("header length " + std::to_string(header_length) + " (file bytes 0-7) runs past the end of the file (" +
           std::to_string(file_size - 8) + " bytes follow the length)");
    data_offset_ = 8 + header_length;
    const std::uint64_t buffer_size = file_size - data_offset_;

    Json header;
    try {
      JsonLimits limits;
      limits.max_depth = 64;
      limits.max_bytes = static_cast<std::size_t>(max_header_bytes);
      header = parse_json(std::string_view(bytes_).substr(8, static_cast<std::size_t>(header_length)), source_, limits);
    } catch (const JsonError& e) {
      fail("the header is not valid JSON: file byte " + std::to_string(8 + e.offset()) + ": " + e.reason());
    }
    if (!header.is_object())
      fail("the header (file byte 8) is a JSON " + std::string(Json::kind_name(header.kind())) +
           ", expected an object");

    for (const Json::Member& member : header.as_object()) {
      const std::string& name = member.first;
      const Json& value = member.second;
      if (name == "__metadata__") {
        read_metadata(value);
        continue;
      }
      tensors_.emplace_back(name, read_entry(name, value, buffer_size));
    }
    check_overlaps();
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].first, i);
  }

  void read_metadata(const Json& value) {
    const std::string where = "__metadata__ (file byte " + std::to_string(8 + value.source_offset()) + ")";
    if (!value.is_object())
      fail(where + " is a JSON " + Json::kind_name(value.kind()) + ", expected an object of strings");
    for (const Json::Member& m : value.as_object()) {
      if (!m.second.is_string())
        fail(where + ": the value of \"" + m.first + "\" (file byte " + std::to_string(8 + m.second.source_offset()) +
             ") is a " + Json::kind_name(m.second.kind()) + ", expected a string");
      metadata_.emplace(m.first, m.second.as_string());
    }
  }

  SafeTensorInfo read_entry(const std::string& name, const Json& value, std::uint64_t buffer_size) const {
    const std::string where = entry_text(name, value);
    if (!value.is_object())
      fail(where + " is a JSON " + Json::kind_name(value.kind()) +
           ", expected an object with dtype, shape and data_offsets");
    const auto field = [&](const char* key) -> const Json& {
      const Json* f = value.find(key);
      if (!f) fail(where + " has no \"" + key + "\"");
      return *f;
    };
    const auto at_byte = [](const Json& v) { return " (file byte " + std::to_string(8 + v.source_offset()) + ")"; };

    SafeTensorInfo info;
    const Json& dtype = field("dtype");
    if (!dtype.is_string()) fail(where + ": dtype" + at_byte(dtype) + " is not a string");
    if (!parse_dtype(dtype.as_string(), info.dtype)) {
      std::string known;
      for (DType t : all_dtypes) known += std::string(known.empty() ? "" : ", ") + dtype_name(t);
      fail(where + ": unknown dtype \"" + dtype.as_string() + "\"" + at_byte(dtype) + " (known: " + known + ")");
    }

    const Json& shape = field("shape");
    if (!shape.is_array()) fail(where + ": shape" + at_byte(shape) + " is not an array of non-negative integers");
    // The product of the non-zero extents must fit in int64 (so no product of extents taken in
    // any order overflows); a zero extent makes the tensor empty.
    std::uint64_t nonzero_product = 1;
    bool has_zero = false;
    for (std::size_t i = 0; i < shape.size(); ++i) {
      const Json& d = shape.as_array()[i];
      if (!d.is_integer() || d.as_int64() < 0)
        fail(where + ": shape entry " + std::to_string(i) + at_byte(d) + " is " + to_json_or_kind(d) +
             ", expected a non-negative integer");
      const auto extent = static_cast<std::uint64_t>(d.as_int64());
      info.shape.push_back(d.as_int64());
      if (extent == 0) {
        has_zero = true;
        continue;
      }
      if (nonzero_product > static_cast<std::uint64_t>(INT64_MAX) / extent)
        fail(where + ": shape" + at_byte(shape) + " has extents whose product does not fit in 64 bits");
      nonzero_product *= extent;
    }
    const std::uint64_t numel = has_zero ? 0 : nonzero_product;

    const Json& offsets = field("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2 || !offsets.as_array()[0].is_integer() ||
        !offsets.as_array()[1].is_integer() || offsets.as_array()[0].as_int64() < 0 ||
        offsets.as_array()[1].as_int64() < 0)
      fail(where + ": data_offsets" + at_byte(offsets) + " must be [begin, end], two non-negative integers");
    info.begin = static_cast<std::uint64_t>(offsets.as_array()[0].as_int64());
    info.end = static_cast<std::uint64_t>(offsets.as_array()[1].as_int64());
    const std::string offsets_where = "data_offsets " + detail::offsets_text(info.begin, info.end) + at_byte(offsets);
    if (info.end < info.begin) fail(where + ": " + offsets_where + " end before they begin");
    if (info.end > buffer_size)
      fail(where + ": " + offsets_where + " run past the end of the data buffer, which holds " +
           std::to_string(buffer_size) + " bytes (file bytes " + std::to_string(data_offset_) + " to " +
           std::to_string(data_offset_ + buffer_size) + ")");
    const std::uint64_t size = dtype_size(info.dtype);
    if (numel > UINT64_MAX / size)
      fail(where + ": shape " + detail::shape_text(info.shape) + " of " + dtype_name(info.dtype) +
           " needs more bytes than fit in 64 bits");
    if (info.end - info.begin != numel * size)
      fail(where + ": " + offsets_where + " hold " + std::to_string(info.end - info.begin) + " bytes but shape " +
           detail::shape_text(info.shape) + " of " + dtype_name(info.dtype) + " needs " +
           std::to_string(numel * size) + " bytes");
    return info;
  }

  static std::string to_json_or_kind(const Json& v) {
    if (v.is_number() || v.is_bool() || v.is_null()) return to_json(v);
    return std::string(v.is_array() || v.is_object() ? "an " : "a ") + Json::kind_name(v.kind());
  }

  void check_overlaps() const {
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < tensors_.size(); ++i)
      if (tensors_[i].second.end > tensors_[i].second.begin) order.push_back(i);  // empty ones hold no bytes
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return tensors_[a].second.begin < tensors_[b].second.begin;
    });
    for (std::size_t k = 1; k < order.size(); ++k) {
      const auto& previous = tensors_[order[k - 1]];
      const auto& current = tensors_[order[k]];
      if (current.second.begin < previous.second.end)
        fail("tensors '" + previous.first + "' (data_offsets " +
             detail::offsets_text(previous.second.begin, previous.second.end) + ") and '" + current.first +
             "' (data_offsets " + detail::offsets_text(current.second.begin, current.second.end) +
             ") overlap from file byte " + std::to_string(data_offset_ + current.second.begin));
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

namespace detail {

// Appends the elements of `t` (any strides) in row-major order, encoded as `dtype`.
template <class T>
void append_encoded(std::string& out, const Tensor<T>& t, DType dtype) {
  const index_t n = t.numel();
  if (n == 0) return;
  const std::size_t size = dtype_size(dtype);
  const std::size_t start = out.size();
  out.resize(start + static_cast<std::size_t>(n) * size);
  auto* dst = reinterpret_cast<unsigned char*>(out.data()) + start;
  const Shape& shape = t.shape();
  const Shape& strides = t.strides();
  const T* base = t.data();
  index_t counter[max_dims] = {};
  index_t offset = 0;
  for (index_t i = 0; i < n; ++i) {
    const T v = base[offset];
    switch (dtype) {
      case DType::F64: store_little_endian(dst, std::bit_cast<std::uint64_t>(static_cast<double>(v))); break;
      case DType::F32: store_little_endian(dst, std::bit_cast<std::uint32_t>(static_cast<float>(v))); break;
      case DType::F16:
        if constexpr (std::is_same_v<T, float>) store_little_endian(dst, float_to_half_bits(v));
        else store_little_endian(dst, double_to_half_bits(static_cast<double>(v)));
        break;
      case DType::BF16:
        if constexpr (std::is_same_v<T, float>) store_little_endian(dst, kiln::detail::float_to_bfloat16_bits(v));
        else store_little_endian(dst, double_to_bfloat16_bits(static_cast<double>(v)));
        break;
      default: break;
    }
    dst += size;
    // Advance the multi-index, last axis fastest.
    for (int d = shape.ndim - 1; d >= 0; --d) {
      offset += strides.dims[d];
      if (++counter[d] < shape.dims[d]) break;
      offset -= strides.dims[d] * shape.dims[d];
      counter[d] = 0;
    }
  }
}

template <class T>
std::string encode_safetensors(const std::vector<std::pair<std::string, Tensor<T>>>& entries,
                               const std::map<std::string, std::string>& metadata, DType dtype) {
  const char* op = "kiln::io::save_safetensors: ";
  if (!is_convertible_float(dtype))
    throw ValueError(std::string(op) + "floating tensors are stored as F32, F64, F16 or BF16, not " +
                     dtype_name(dtype));
  // The reference implementation orders tensors by dtype (all equal here), then by name.
  std::vector<std::size_t> order(entries.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return entries[a].first < entries[b].first; });
  for (std::size_t k = 0; k < order.size(); ++k) {
    const auto& [name, tensor] = entries[order[k]];
    if (k > 0 && name == entries[order[k - 1]].first)
      throw ValueError(std::string(op) + "two tensors are named '" + name + "'");
    if (name == "__metadata__")
      throw ValueError(std::string(op) + "'__metadata__' is reserved for the metadata and cannot name a tensor");
    if (!tensor.defined()) throw ValueError(std::string(op) + "tensor '" + name + "' is undefined");
  }

  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [key, value] : metadata) meta.as_object().emplace_back(key, Json(value));
    header.as_object().emplace_back("__metadata__", std::move(meta));
  }
  std::uint64_t offset = 0;
  for (std::size_t i : order) {
    const auto& [name, tensor] = entries[i];
    const std::uint64_t bytes = static_cast<std::uint64_t>(tensor.numel()) * dtype_size(dtype);
    Json shape = Json::array();
    for (int d = 0; d < tensor.dim(); ++d) shape.as_array().emplace_back(tensor.shape().dims[d]);
    Json entry = Json::object();
    entry.as_object().emplace_back("dtype", Json(dtype_name(dtype)));
    entry.as_object().emplace_back("shape", std::move(shape));
    entry.as_object().emplace_back("data_offsets", Json(Json::Array{Json(offset), Json(offset + bytes)}));
    header.as_object().emplace_back(name, std::move(entry));
    offset += bytes;
  }
  std::string header_text = to_json(header);
  try {
    (void)parse_json(header_text, "the header being written");  // readers need valid UTF-8
  } catch (const JsonError& e) {
    throw ValueError(std::string(op) + "tensor names and metadata must be valid UTF-8: " + e.reason());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned

  std::string out;
  out.reserve(8 + header_text.size() + static_cast<std::size_t>(offset));
  out.resize(8);
  store_little_endian(reinterpret_cast<unsigned char*>(out.data()), static_cast<std::uint64_t>(header_text.size()));
  out += header_text;
  for (std::size_t i : order) append_encoded(out, entries[i].second, dtype);
  return out;
}

}  // namespace detail

// The bytes of a safetensors file holding `entries` (name, tensor) stored as `dtype` (F32,
// F64, F16 or BF16; narrowing rounds to nearest even) and `metadata` as "__metadata__" (left
// out when empty). Laid out as the reference implementation does: "__metadata__" first, then
// tensors sorted by name with their data in that order; the header is compact JSON padded
// with spaces to a multiple of 8 bytes. Duplicate or reserved names throw ValueError.
inline std::string safetensors_bytes(const std::vector<std::pair<std::string, Tensor<float>>>& entries,
                                     const std::map<std::string, std::string>& metadata = {},
                                     DType dtype = DType::F32) {
  return detail::encode_safetensors(entries, metadata, dtype);
}
inline std::string safetensors_bytes(const std::vector<std::pair<std::string, Tensor<double>>>& entries,
                                     const std::map<std::string, std::string>& metadata = {},
                                     DType dtype = DType::F32) {
  return detail::encode_safetensors(entries, metadata, dtype);
}

// Writes safetensors_bytes(entries, metadata, dtype) to `path` with write_file_atomic.
inline void save_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, Tensor<float>>>& entries,
                             const std::map<std::string, std::string>& metadata = {},
                             DType dtype = DType::F32) {
  write_file_atomic(path, safetensors_bytes(entries, metadata, dtype));
}
inline void save_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, Tensor<double>>>& entries,
                             const std::map<std::string, std::string>& metadata = {},
                             DType dtype = DType::F32) {
  write_file_atomic(path, safetensors_bytes(entries, metadata, dtype));
}

}  // namespace kiln::io
