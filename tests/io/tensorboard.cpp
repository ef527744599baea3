// Tests of include/kiln/io/tensorboard.hpp: CRC-32C against the check value and RFC 3720's
// vectors, varints and fields encoded by hand, a scalar Event spelled out byte by byte, and event
// files read back by tests/reference/tensorboard_check.py (plain Python: its own bitwise CRC-32C,
// protobuf decoder and PNG decoder), compared with what was written.
#include <doctest/doctest.h>
#include <kiln/io/json.hpp>
#include <kiln/io/tensorboard.hpp>
#include "../support/torch_reference.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;

// A fresh directory under the system's temporary directory, removed with everything in it.
struct TemporaryDirectory {
  fs::path path;
  explicit TemporaryDirectory(const std::string& stem) {
    static int counter = 0;
    path = fs::temp_directory_path() /
           (stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
  }
  ~TemporaryDirectory() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string bytes_of(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out += static_cast<char>(v);
  return out;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(dir)) out.push_back(entry.path());
  return out;
}

kiln::io::Image pattern_image(int width, int height, int channels, int seed) {
  kiln::io::Image image{width, height, channels, {}};
  for (int i = 0; i < width * height * channels; ++i)
    image.pixels.push_back(static_cast<std::uint8_t>((i * 37 + seed * 101 + (i / 7) * 13) & 0xFF));
  return image;
}

std::string hex(const std::vector<std::uint8_t>& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

}  // namespace

TEST_CASE("CRC-32C: the check value and RFC 3720 appendix B.4 vectors") {
  CHECK(kiln::io::crc32c("123456789") == 0xE3069283u);
  CHECK(kiln::io::crc32c("") == 0u);
  CHECK(kiln::io::crc32c(std::string(32, '\0')) == 0x8A9136AAu);
  CHECK(kiln::io::crc32c(std::string(32, '\xFF')) == 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending += static_cast<char>(i);
  CHECK(kiln::io::crc32c(ascending) == 0x46DD794Eu);
  // continuing over a split gives the CRC of the whole
  CHECK(kiln::io::crc32c("6789", kiln::io::crc32c("12345")) == 0xE3069283u);
  // the mask: rotate right by 15, add 0xa282ead8 (mod 2^32)
  CHECK(kiln::io::tfrecord_masked_crc(0u) == 0xa282ead8u);
  CHECK(kiln::io::tfrecord_masked_crc(1u << 15) == 0xa282ead9u);
  CHECK(kiln::io::tfrecord_masked_crc(1u) == 0xa282ead8u + (1u << 17));
}

TEST_CASE("protobuf varints, tags and fields by hand") {
  namespace pb = kiln::io::protobuf;
  const auto varint = [](std::uint64_t v) {
    std::string out;
    pb::append_varint(out, v);
    return out;
  };
  CHECK(varint(0) == bytes_of({0x00}));
  CHECK(varint(1) == bytes_of({0x01}));
  CHECK(varint(127) == bytes_of({0x7F}));
  CHECK(varint(128) == bytes_of({0x80, 0x01}));
  CHECK(varint(300) == bytes_of({0xAC, 0x02}));
  CHECK(varint(16384) == bytes_of({0x80, 0x80, 0x01}));
  CHECK(varint(std::numeric_limits<std::uint64_t>::max()) ==
        bytes_of({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));

  std::string f;
  pb::append_int_field(f, 2, 150);  // the encoding guide's example: 08 96 01 for field 1
  CHECK(f == bytes_of({0x10, 0x96, 0x01}));
  f.clear();
  pb::append_int_field(f, 1, -1);  // negative int64: ten bytes
  CHECK(f == bytes_of({0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));
  f.clear();
  pb::append_bytes_field(f, 2, "testing");
  CHECK(f == bytes_of({0x12, 0x07}) + "testing");
  f.clear();
  pb::append_double_field(f, 1, 1.5);  // 0x3FF8000000000000 little-endian
  CHECK(f == bytes_of({0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F}));
  f.clear();
  pb::append_float_field(f, 2, -2.0f);  // 0xC0000000
  CHECK(f == bytes_of({0x15, 0, 0, 0, 0xC0}));
  f.clear();
  pb::append_tag(f, 16, pb::WireType::length_delimited);  // (16 << 3) | 2 = 130 -> 82 01
  CHECK(f == bytes_of({0x82, 0x01}));
}

TEST_CASE("a scalar Event and its TFRecord, byte by byte") {
  // Event { wall_time = 1.5 (09 + 8 bytes), step = 3 (10 03), summary = 5 (2A len) {
  //   value = 1 (0A len) { tag = 1 (0A 01 'a'), simple_value = 2 (15 + 2.0f = 00 00 00 40) } } }
  const std::string value = bytes_of({0x0A, 0x01, 'a', 0x15, 0, 0, 0, 0x40});
  const std::string summary = bytes_of({0x0A, 0x08}) + value;
  const std::string expected =
      bytes_of({0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F, 0x10, 0x03, 0x2A, 0x0A}) + summary;
  const std::string event = kiln::io::tensorboard_scalar_event(1.5, 3, "a", 2.0f);
  CHECK(event == expected);
  CHECK(event.size() == 23);

  const std::string record = kiln::io::tfrecord_bytes(event);
  REQUIRE(record.size() == 8 + 4 + 23 + 4);
  CHECK(record.substr(0, 8) == bytes_of({23, 0, 0, 0, 0, 0, 0, 0}));
  const auto le32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t(static_cast<unsigned char>(record[at + i])) << (8 * i);
    return v;
  };
  CHECK(le32(8) == kiln::io::tfrecord_masked_crc(kiln::io::crc32c(std::string_view(record.data(), 8))));
  CHECK(record.substr(12, 23) == event);
  CHECK(le32(35) == kiln::io::tfrecord_masked_crc(kiln::io::crc32c(event)));

  // file_version event: wall_time then field 3 (1A 0D "brain.Event:2")
  const std::string version = kiln::io::tensorboard_file_version_event(1.5);
  CHECK(version == bytes_of({0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F, 0x1A, 0x0D}) + "brain.Event:2");
}

TEST_CASE("TensorBoardWriter: the file name, and every record read back by an independent decoder") {
  TemporaryDirectory dir("kiln_tensorboard");
  const fs::path logdir = dir.path / "runs" / "a";  // parents are created
  const double before = kiln::io::unix_time_seconds();
  const kiln::io::Image rgb = pattern_image(5, 3, 3, 1);
  const kiln::io::Image gray = pattern_image(4, 4, 1, 2);
  const kiln::io::Image rgba = pattern_image(2, 3, 4, 3);
  struct Scalar {
    std::string tag;
    double value;
    std::int64_t step;
  };
  const std::vector<Scalar> scalars = {{"loss/train", 0.25, 0},
                                       {"loss/train", 0.125, 1},
                                       {"accuracy", 0.1, 1},  // rounded to float 0.1f
                                       {"loss/train", -3.5e10, std::int64_t(1) << 40},
                                       {"loss/train", 7.0, -2}};
  fs::path file;
  {
    kiln::io::TensorBoardWriter writer(logdir);
    file = writer.path();
    for (const Scalar& s : scalars) writer.add_scalar(s.tag, s.value, s.step);
    writer.add_image("samples/rgb", rgb, 10);
    writer.add_image("samples/gray", gray, 11);
    writer.add_image("samples/rgba", rgba, 12, 1234.5);  // an explicit wall_time
  }  // the destructor flushes
  const double after = kiln::io::unix_time_seconds();

  // events.out.tfevents.<10 digits>.<hostname>
  char host[256] = {};
  REQUIRE(::gethostname(host, sizeof host - 1) == 0);
  const std::string name = file.filename().string();
  const std::string prefix = "events.out.tfevents.";
  REQUIRE(name.size() == prefix.size() + 10 + 1 + std::string(host).size());
  CHECK(name.substr(0, prefix.size()) == prefix);
  const std::string seconds = name.substr(prefix.size(), 10);
  CHECK(seconds.find_first_not_of("0123456789") == std::string::npos);
  CHECK(std::stoll(seconds) >= static_cast<long long>(before));
  CHECK(std::stoll(seconds) <= static_cast<long long>(after));
  CHECK(name.substr(prefix.size() + 10) == "." + std::string(host));
  CHECK(file.parent_path() == logdir);
  CHECK(files_in(logdir).size() == 1);

  const fs::path json_path = dir.path / "records.json";
  REQUIRE(kiln::test::run_python_script("json, struct, zlib", "python3", "reference/tensorboard_check.py",
                                        kiln::test::shell_quote(file.string()) + " " +
                                            kiln::test::shell_quote(json_path.string())) == 0);
  const kiln::io::Json records = kiln::io::parse_json(read_all(json_path), json_path.string());
  REQUIRE(records.size() == 1 + scalars.size() + 3);

  const kiln::io::Json& first = records.at(std::size_t(0));
  CHECK(first.at("file_version").as_string() == "brain.Event:2");
  CHECK(first.at("values").size() == 0);
  for (std::size_t i = 0; i < records.size(); ++i) {
    CAPTURE(i);
    CHECK(records.at(i).at("unknown_fields").size() == 0);
    const double wall = records.at(i).at("wall_time").as_double();
    if (i + 1 == records.size()) {
      CHECK(wall == 1234.5);
    } else {
      CHECK(wall >= before);
      CHECK(wall <= after);
    }
  }
  for (std::size_t i = 0; i < scalars.size(); ++i) {
    CAPTURE(i);
    const kiln::io::Json& r = records.at(1 + i);
    CHECK(r.find("file_version") == nullptr);
    CHECK(r.at("step").as_int64() == scalars[i].step);
    REQUIRE(r.at("values").size() == 1);
    const kiln::io::Json& v = r.at("values").at(std::size_t(0));
    CHECK(v.at("tag").as_string() == scalars[i].tag);
    CHECK(v.at("simple_value").as_double() == static_cast<double>(static_cast<float>(scalars[i].value)));
  }
  const kiln::io::Image* images[] = {&rgb, &gray, &rgba};
  const char* tags[] = {"samples/rgb", "samples/gray", "samples/rgba"};
  for (int k = 0; k < 3; ++k) {
    CAPTURE(k);
    const kiln::io::Json& r = records.at(1 + scalars.size() + std::size_t(k));
    CHECK(r.at("step").as_int64() == 10 + k);
    REQUIRE(r.at("values").size() == 1);
    const kiln::io::Json& v = r.at("values").at(std::size_t(0));
    CHECK(v.at("tag").as_string() == tags[k]);
    CHECK(v.find("simple_value") == nullptr);
    const kiln::io::Json& image = v.at("image");
    CHECK(image.at("height").as_int64() == images[k]->height);
    CHECK(image.at("width").as_int64() == images[k]->width);
    CHECK(image.at("colorspace").as_int64() == images[k]->channels);  // 1 gray, 3 RGB, 4 RGBA
    const kiln::io::Json& png = image.at("png");
    CHECK(png.at("width").as_int64() == images[k]->width);
    CHECK(png.at("height").as_int64() == images[k]->height);
    CHECK(png.at("channels").as_int64() == images[k]->channels);
    CHECK(png.at("pixels_hex").as_string() == hex(images[k]->pixels));
  }
}

TEST_CASE("TensorBoardWriter: buffering, flush, a second writer in the same directory, a suffix") {
  TemporaryDirectory dir("kiln_tensorboard_flush");
  kiln::io::TensorBoardWriter a(dir.path);
  const auto size0 = fs::file_size(a.path());
  // the file_version record is on disk at once: 8 + 4 + (9 + 2 + 13) + 4 bytes
  CHECK(size0 == 8 + 4 + 24 + 4);
  a.add_scalar("x", 1.0, 1, 0.0);
  CHECK(fs::file_size(a.path()) == size0);  // buffered
  a.flush();
  // Event { wall_time (9), step (2), summary (2 + Summary { 2 + Value { 3 + 5 } }) } = 23 bytes
  CHECK(fs::file_size(a.path()) == size0 + 8 + 4 + 23 + 4);

  kiln::io::TensorBoardWriter b(dir.path);  // most likely the same second: a distinct file anyway
  CHECK(b.path() != a.path());
  kiln::io::TensorBoardWriter c(dir.path, ".eval");
  const std::string c_name = c.path().filename().string();
  CHECK(c_name.substr(c_name.size() - 5) == ".eval");
  CHECK(files_in(dir.path).size() == 3);
}

TEST_CASE("TensorBoardWriter: errors name the file and the problem") {
  TemporaryDirectory dir("kiln_tensorboard_errors");
  fs::create_directories(dir.path);
  const fs::path not_a_directory = dir.path / "plain_file";
  std::ofstream(not_a_directory) << "x";
  CHECK_THROWS_WITH_AS(kiln::io::TensorBoardWriter{not_a_directory},
                       doctest::Contains(not_a_directory.string().c_str()), kiln::io::FileError);
  CHECK_THROWS_WITH_AS(kiln::io::TensorBoardWriter{not_a_directory / "sub"},
                       doctest::Contains("cannot create the log directory"), kiln::io::FileError);

  kiln::io::TensorBoardWriter writer(dir.path / "ok");
  CHECK_THROWS_WITH_AS(writer.add_scalar("", 1.0, 0), doctest::Contains("the tag is empty"), kiln::ValueError);
  kiln::io::Image wrong{2, 2, 3, std::vector<std::uint8_t>(5)};
  CHECK_THROWS_WITH_AS(writer.add_image("img", wrong, 0), doctest::Contains("needs 12 bytes of pixels, got 5"),
                       kiln::ValueError);
  kiln::io::Image two_channels{2, 2, 2, std::vector<std::uint8_t>(8)};
  CHECK_THROWS_AS(writer.add_image("img", two_channels, 0), kiln::ValueError);
}
