// kiln/io/tensorboard.hpp — TensorBoardWriter: scalars and PNG images in a TensorBoard event file
// (TFRecord framing with masked CRC-32C, hand-encoded Event/Summary protobufs), and those encoders.
// Builds on io/png.hpp (Image, png_bytes), io/safetensors.hpp (FileError) and POSIX files.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/io/png.hpp>          // Image, png_bytes
#include <kiln/io/safetensors.hpp>  // FileError

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include <fcntl.h>
#include <unistd.h>

namespace kiln::io {

// --- CRC-32C ------------------------------------------------------------------------------------

namespace detail {
// CRC-32C (Castagnoli) table for the reflected polynomial 0x82F63B78: entry i is the CRC register
// after shifting byte i through it, least significant bit first.
constexpr std::array<std::uint32_t, 256> make_crc32c_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}
inline constexpr std::array<std::uint32_t, 256> crc32c_table = make_crc32c_table();
}  // namespace detail

// CRC-32C (Castagnoli; RFC 3720, appendix B.4: reflected polynomial 0x82F63B78, initial value and
// final XOR 0xFFFFFFFF) of `size` bytes, continuing from `crc` (0 to start). "123456789" gives
// 0xE3069283.
inline std::uint32_t crc32c(const std::uint8_t* data, std::size_t size, std::uint32_t crc = 0) {
  crc = ~crc;
  while (size--) crc = detail::crc32c_table[(crc ^ *data++) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

inline std::uint32_t crc32c(std::string_view bytes, std::uint32_t crc = 0) {
  return crc32c(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), crc);
}

// The CRC as TFRecord files store it (tensorflow/core/lib/hash/crc32c.h, Mask): rotated right by
// 15 bits, plus 0xa282ead8, so that a CRC of data holding CRCs does not degenerate.
inline std::uint32_t tfrecord_masked_crc(std::uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// One TFRecord (tensorflow/core/lib/io/record_writer.cc): the length as a little-endian uint64,
// the masked CRC-32C of those 8 bytes (little-endian uint32), the data, the masked CRC-32C of the
// data.
inline std::string tfrecord_bytes(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  const auto put32 = [&](std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out += static_cast<char>(v >> (8 * i));
  };
  const std::uint64_t length = data.size();
  for (int i = 0; i < 8; ++i) out += static_cast<char>(length >> (8 * i));
  put32(tfrecord_masked_crc(crc32c(std::string_view(out.data(), 8))));
  out.append(data);
  put32(tfrecord_masked_crc(crc32c(data)));
  return out;
}

// --- Protocol buffer encoding (https://protobuf.dev/programming-guides/encoding/) ---------------

namespace protobuf {

// Wire types of a field's tag.
enum class WireType : std::uint32_t { varint = 0, fixed64 = 1, length_delimited = 2, fixed32 = 5 };

// Base-128 varint: 7 bits per byte, least significant group first, the high bit set on every byte
// but the last (300 -> AC 02).
inline void append_varint(std::string& out, std::uint64_t value) {
  while (value >= 0x80) {
    out += static_cast<char>((value & 0x7Fu) | 0x80u);
    value >>= 7;
  }
  out += static_cast<char>(value);
}

// The key of a field: (field_number << 3) | wire_type, as a varint.
inline void append_tag(std::string& out, std::uint32_t field, WireType type) {
  append_varint(out, (std::uint64_t(field) << 3) | static_cast<std::uint32_t>(type));
}

// int32 and int64 fields are varints of the value's two's complement sign-extended to 64 bits, so
// a negative value takes ten bytes.
inline void append_int_field(std::string& out, std::uint32_t field, std::int64_t value) {
  append_tag(out, field, WireType::varint);
  append_varint(out, static_cast<std::uint64_t>(value));
}

// double: fixed64, the IEEE 754 bits little-endian.
inline void append_double_field(std::string& out, std::uint32_t field, double value) {
  append_tag(out, field, WireType::fixed64);
  const auto bits = std::bit_cast<std::uint64_t>(value);
  for (int i = 0; i < 8; ++i) out += static_cast<char>(bits >> (8 * i));
}

// float: fixed32, the IEEE 754 bits little-endian.
inline void append_float_field(std::string& out, std::uint32_t field, float value) {
  append_tag(out, field, WireType::fixed32);
  const auto bits = std::bit_cast<std::uint32_t>(value);
  for (int i = 0; i < 4; ++i) out += static_cast<char>(bits >> (8 * i));
}

// string, bytes and embedded messages: the length as a varint, then the bytes.
inline void append_bytes_field(std::string& out, std::uint32_t field, std::string_view bytes) {
  append_tag(out, field, WireType::length_delimited);
  append_varint(out, bytes.size());
  out.append(bytes);
}

}  // namespace protobuf

// --- TensorBoard events ----------------------------------------------------------------------
//
// The messages, with the field numbers of tensorflow/core/util/event.proto and
// tensorflow/core/framework/summary.proto (only the fields written here):
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; Image image = 4; }
//   Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
// colorspace: 1 grayscale, 2 grayscale + alpha, 3 RGB, 4 RGBA.

// The Event that opens every event file: file_version "brain.Event:2" (the current version of
// event.proto; TensorBoard reads the file only when it starts so).
inline std::string tensorboard_file_version_event(double wall_time) {
  std::string event;
  protobuf::append_double_field(event, 1, wall_time);
  protobuf::append_bytes_field(event, 3, "brain.Event:2");
  return event;
}

// An Event holding one Summary.Value: the serialized `value` message with `tag` written first.
inline std::string tensorboard_summary_event(double wall_time, std::int64_t step, std::string_view value) {
  std::string summary;
  protobuf::append_bytes_field(summary, 1, value);
  std::string event;
  protobuf::append_double_field(event, 1, wall_time);
  protobuf::append_int_field(event, 2, step);
  protobuf::append_bytes_field(event, 5, summary);
  return event;
}

// An Event with one scalar: Value { tag, simple_value } (TensorBoard's scalars dashboard).
inline std::string tensorboard_scalar_event(double wall_time, std::int64_t step, std::string_view tag, float value) {
  std::string v;
  protobuf::append_bytes_field(v, 1, tag);
  protobuf::append_float_field(v, 2, value);
  return tensorboard_summary_event(wall_time, step, v);
}

// An Event with one image: Value { tag, image = Image { height, width, colorspace, PNG bytes } }
// (TensorBoard's images dashboard). colorspace is the channel count (1 gray, 3 RGB, 4 RGBA).
inline std::string tensorboard_image_event(double wall_time, std::int64_t step, std::string_view tag,
                                           const Image& image) {
  std::string img;
  protobuf::append_int_field(img, 1, image.height);
  protobuf::append_int_field(img, 2, image.width);
  protobuf::append_int_field(img, 3, image.channels);
  protobuf::append_bytes_field(img, 4, png_bytes(image));  // checks the image's size and channels
  std::string v;
  protobuf::append_bytes_field(v, 1, tag);
  protobuf::append_bytes_field(v, 4, img);
  return tensorboard_summary_event(wall_time, step, v);
}

// Seconds since the Unix epoch, as Event.wall_time holds them.
inline double unix_time_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

// Writes an event file that TensorBoard reads (`tensorboard --logdir LOGDIR`):
//
//   kiln::io::TensorBoardWriter tb("runs/gan");
//   tb.add_scalar("loss/generator", g_loss, step);
//   tb.add_image("samples", kiln::io::image_grid(fake, 8), step);
//
// The constructor creates `logdir` (and its parents) and the file
// LOGDIR/events.out.tfevents.<unix seconds, 10 digits>.<hostname><suffix>, the name TensorFlow's
// EventsWriter uses (tensorflow/core/util/events_writer.cc: "%s.out.tfevents.%010lld.%s%s"),
// and writes the file_version event to it at once. Should that name exist already (two writers
// started in the same second), ".1", ".2", ... is appended; TensorBoard reads every file whose
// name contains "tfevents". Records are buffered and written by flush(), when the buffer passes
// 1 MiB, and by the destructor (which swallows errors: call flush() to see them).
// Errors throw kiln::io::FileError naming the file or directory and the system's reason.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::filesystem::path& logdir, std::string_view filename_suffix = "") {
    std::error_code ec;
    std::filesystem::create_directories(logdir, ec);
    if (ec || !std::filesystem::is_directory(logdir))
      throw FileError("kiln::io::TensorBoardWriter: cannot create the log directory '" + logdir.string() +
                      "'" + (ec ? ": " + ec.message() : std::string(": it exists and is not a directory")));
    const double now = unix_time_seconds();
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%010lld", static_cast<long long>(now));
    const std::string base = "events.out.tfevents." + std::string(seconds) + "." + hostname() +
                             std::string(filename_suffix);
    for (int attempt = 0;; ++attempt) {
      path_ = logdir / (attempt == 0 ? base : base + "." + std::to_string(attempt));
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd_ >= 0) break;
      if (errno != EEXIST || attempt >= 1000)
        detail::throw_file_error("TensorBoardWriter", "cannot create the event file", path_.string(), errno);
    }
    try {
      append_record(tensorboard_file_version_event(now));
      flush();
    } catch (...) {
      ::close(fd_);
      throw;
    }
  }

  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  ~TensorBoardWriter() {
    try {
      flush();
    } catch (...) {  // a destructor must not throw; flush() reports the error to those who call it
    }
    if (fd_ >= 0) ::close(fd_);
  }

  // The event file being written.
  const std::filesystem::path& path() const { return path_; }

  // One point of the scalar series `tag` (TensorBoard stores it as a float: `value` is rounded to
  // the nearest float). wall_time defaults to now (seconds since the Unix epoch).
  void add_scalar(std::string_view tag, double value, std::int64_t step, std::optional<double> wall_time = {}) {
    check_tag("add_scalar", tag);
    append_record(tensorboard_scalar_event(wall_time.value_or(unix_time_seconds()), step, tag,
                                           static_cast<float>(value)));
  }

  // One image of the series `tag`, stored as PNG (png_bytes: 1 gray, 3 RGB or 4 RGBA channels;
  // throws ValueError for another channel count or a pixel buffer of the wrong size).
  void add_image(std::string_view tag, const Image& image, std::int64_t step, std::optional<double> wall_time = {}) {
    check_tag("add_image", tag);
    append_record(tensorboard_image_event(wall_time.value_or(unix_time_seconds()), step, tag, image));
  }

  // Writes the buffered records to the file.
  void flush() {
    std::size_t done = 0;
    while (done < pending_.size()) {
      const ::ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int e = errno;
        pending_.erase(0, done);
        detail::throw_file_error("TensorBoardWriter::flush", "cannot write", path_.string(), e);
      }
      done += static_cast<std::size_t>(n);
    }
    pending_.clear();
  }

 private:
  static std::string hostname() {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
    return name;
  }

  static void check_tag(const char* op, std::string_view tag) {
    if (tag.empty()) throw ValueError(std::string("kiln::io::TensorBoardWriter::") + op + ": the tag is empty");
  }

  void append_record(const std::string& event) {
    pending_ += tfrecord_bytes(event);
    if (pending_.size() >= (std::size_t(1) << 20)) flush();
  }

  std::filesystem::path path_;
  int fd_ = -1;
  std::string pending_;
};

}  // namespace kiln::io
