// Tests for kiln/io/json.hpp: values, escapes and surrogate pairs decoded to hand-written UTF-8
// bytes, numbers (exact integers, rounding, range), nesting and size limits, error offsets,
// the writer's exact output, and random texts and mutations that must parse or throw JsonError.
#include <kiln/io/json.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

namespace io = kiln::io;
using io::Json;

// The JsonError that parsing `text` throws (offset and message), or a failed check if none.
struct Failure {
  std::size_t offset = 0;
  std::string message;
  bool thrown = false;
};
Failure parse_failure(const std::string& text, const io::JsonLimits& limits = {}) {
  Failure f;
  try {
    io::parse_json(text, "test.json", limits);
  } catch (const io::JsonError& e) {
    f.offset = e.offset();
    f.message = e.what();
    f.thrown = true;
  }
  return f;
}

bool fails_at(const std::string& text, std::size_t offset, const std::string& words) {
  const Failure f = parse_failure(text);
  INFO("text: " << text << "\nmessage: " << f.message);
  return f.thrown && f.offset == offset && f.message.find(words) != std::string::npos &&
         f.message.find("byte " + std::to_string(offset)) != std::string::npos;
}

}  // namespace

TEST_CASE("literals, numbers and their exact integers") {
  CHECK(io::parse_json("null").is_null());
  CHECK(io::parse_json(" true ").as_bool() == true);
  CHECK(io::parse_json("\n\tfalse\r\n").as_bool() == false);

  const Json n = io::parse_json("12");
  CHECK(n.is_integer());
  CHECK(n.as_int64() == 12);
  CHECK(n.as_double() == 12.0);
  CHECK(io::parse_json("-0").as_int64() == 0);
  CHECK(std::signbit(io::parse_json("-0").as_double()));
  // 2^53 + 1 has no double, but the integer stays exact.
  const Json big = io::parse_json("9007199254740993");
  CHECK(big.as_int64() == 9007199254740993LL);
  CHECK(big.as_double() == 9007199254740992.0);
  CHECK(io::parse_json("-9223372036854775808").as_int64() == std::numeric_limits<std::int64_t>::min());
  CHECK(io::parse_json("9223372036854775807").as_int64() == std::numeric_limits<std::int64_t>::max());
  const Json beyond = io::parse_json("9223372036854775808");  // 2^63: a number, not an int64
  CHECK_FALSE(beyond.is_integer());
  CHECK(beyond.as_double() == 9223372036854775808.0);
  CHECK_THROWS_WITH_AS(beyond.as_int64(), doctest::Contains("expected an integer that fits in 64 bits"), io::JsonError);

  // Fractions and exponents are numbers but not integers, even when their value is whole.
  CHECK_FALSE(io::parse_json("1.0").is_integer());
  CHECK_FALSE(io::parse_json("1e3").is_integer());
  CHECK(io::parse_json("1e3").as_double() == 1000.0);
  CHECK(io::parse_json("1E+3").as_double() == 1000.0);
  CHECK(io::parse_json("-2.5e-3").as_double() == -0.0025);
  CHECK(io::parse_json("0.1").as_double() == 0.1);  // correctly rounded
  CHECK(io::parse_json("1.7976931348623157e308").as_double() == std::numeric_limits<double>::max());
  CHECK(io::parse_json("4.9406564584124654e-324").as_double() == std::numeric_limits<double>::denorm_min());
  CHECK(io::parse_json("2.2250738585072014e-308").as_double() == std::numeric_limits<double>::min());
  // Too small for a double: a signed zero. Too large: an error.
  CHECK(io::parse_json("1e-400").as_double() == 0.0);
  CHECK(std::signbit(io::parse_json("-1e-400").as_double()));
  CHECK(io::parse_json("0.000000001e-999").as_double() == 0.0);
  CHECK(fails_at("[1e400]", 1, "number 1e400 is outside the range of a double"));
  CHECK(fails_at("-123456789e999", 0, "outside the range"));
}

TEST_CASE("malformed numbers and literals are rejected at the right byte") {
  CHECK(fails_at("01", 1, "leading zero"));
  CHECK(fails_at("-", 1, "expected a digit in a number, found the end of the text"));
  CHECK(fails_at("-a", 1, "expected a digit in a number, found 'a'"));
  CHECK(fails_at("1.", 2, "expected a digit after '.'"));
  CHECK(fails_at("[.5]", 1, "expected a JSON value, found '.'"));
  CHECK(fails_at("+1", 0, "expected a JSON value, found '+'"));
  CHECK(fails_at("1e", 2, "exponent"));
  CHECK(fails_at("1e+", 3, "exponent"));
  CHECK(fails_at("0x10", 1, "unexpected 'x' after the JSON value"));
  CHECK(fails_at("NaN", 0, "expected a JSON value, found 'N'"));
  CHECK(fails_at("Infinity", 0, "expected a JSON value"));
  CHECK(fails_at("[-Infinity]", 2, "expected a digit"));
  CHECK(fails_at("tru", 0, "invalid literal (expected true)"));
  CHECK(fails_at("nul", 0, "invalid literal (expected null)"));
  CHECK(fails_at("[fals]", 1, "invalid literal (expected false)"));
  CHECK(fails_at("True", 0, "expected a JSON value, found 'T'"));
}

TEST_CASE("string escapes and surrogate pairs decode to UTF-8") {
  CHECK(io::parse_json(R"("a\"b\\c\/d\be\ff\ng\rh\ti")").as_string() == "a\"b\\c/d\be\ff\ng\rh\ti");
  CHECK(io::parse_json(R"("\u0041")").as_string() == "A");
  CHECK(io::parse_json(R"("\u0000")").as_string() == std::string(1, '\0'));
  CHECK(io::parse_json(R"("\u00e9")").as_string() == "\xC3\xA9");       // é: 2 bytes
  CHECK(io::parse_json(R"("\u07FF")").as_string() == "\xDF\xBF");       // last 2-byte code point
  CHECK(io::parse_json(R"("\u0800")").as_string() == "\xE0\xA0\x80");   // first 3-byte code point
  CHECK(io::parse_json(R"("\u20AC")").as_string() == "\xE2\x82\xAC");   // €
  CHECK(io::parse_json(R"("\uFFFF")").as_string() == "\xEF\xBF\xBF");
  // U+1F600 = D83D DE00: 0x10000 + (0x3D << 10) + 0x200.
  CHECK(io::parse_json(R"("\ud83d\ude00")").as_string() == "\xF0\x9F\x98\x80");
  CHECK(io::parse_json(R"("\uD800\uDC00")").as_string() == "\xF0\x90\x80\x80");  // U+10000
  CHECK(io::parse_json(R"("\uDBFF\uDFFF")").as_string() == "\xF4\x8F\xBF\xBF");  // U+10FFFF
  CHECK(io::parse_json(R"("x\ud83d\ude00y\u00e9")").as_string() == "x\xF0\x9F\x98\x80y\xC3\xA9");
  // Raw UTF-8 passes through unchanged, GPT-2 vocab style ("Ġthe").
  CHECK(io::parse_json("\"\xC4\xA0the \xE2\x9C\x93 \xF0\x9F\x98\x80\"").as_string() == "\xC4\xA0the \xE2\x9C\x93 \xF0\x9F\x98\x80");
  CHECK(io::parse_json("\"\"").as_string().empty());
}

TEST_CASE("bad strings: escapes, surrogates, control characters, invalid UTF-8") {
  CHECK(fails_at(R"("ab\x")", 3, "invalid escape '\\x'"));
  CHECK(fails_at(R"("\u12")", 5, "four hex digits"));
  CHECK(fails_at(R"("\u12G4")", 5, "four hex digits, found 'G'"));
  CHECK(fails_at(R"("\ud83d")", 1, "high surrogate \\ud83d is not followed by a \\u low surrogate"));
  CHECK(fails_at(R"("\ud83dx")", 1, "not followed by a \\u low surrogate"));
  CHECK(fails_at(R"("\ud83d\u0041")", 7, "is followed by \\u0041, which is not a low surrogate"));
  CHECK(fails_at(R"("\ud83d\ud83d")", 7, "not a low surrogate"));
  CHECK(fails_at(R"("ok\ude00")", 3, "lone low surrogate \\ude00"));
  CHECK(fails_at("\"a\tb\"", 2, "control character byte 0x09 in a string must be escaped"));
  CHECK(fails_at("\"a\nb\"", 2, "control character"));
  CHECK(fails_at("\"abc", 0, "unterminated string"));
  CHECK(fails_at("\"abc\\", 5, "unterminated escape"));
  CHECK(fails_at("\"\xC3\"", 1, "invalid UTF-8 (byte 0xC3)"));              // cut short
  CHECK(fails_at("\"\xC0\xAF\"", 1, "invalid UTF-8 (byte 0xC0)"));          // overlong '/'
  CHECK(fails_at("\"\xE0\x80\xAF\"", 1, "invalid UTF-8"));                  // overlong
  CHECK(fails_at("\"\xED\xA0\x80\"", 1, "invalid UTF-8 (byte 0xED)"));      // encoded surrogate
  CHECK(fails_at("\"ab\xF4\x90\x80\x80\"", 3, "invalid UTF-8 (byte 0xF4)"));  // above U+10FFFF
  CHECK(fails_at("\"\xFF\"", 1, "invalid UTF-8 (byte 0xFF)"));
  CHECK(fails_at("\"\x80\"", 1, "invalid UTF-8 (byte 0x80)"));               // lone continuation
  CHECK(fails_at("\xC3\xA9", 0, "expected a JSON value, found byte 0xC3"));
}

TEST_CASE("arrays and objects: order kept, structure errors at the right byte") {
  const Json v = io::parse_json(R"( { "zeta" : [1, [], {}, [2, [3]]], "alpha": {"x": null}, "mid": "s" } )");
  REQUIRE(v.is_object());
  REQUIRE(v.size() == 3);
  CHECK(v.as_object()[0].first == "zeta");
  CHECK(v.as_object()[1].first == "alpha");
  CHECK(v.as_object()[2].first == "mid");
  CHECK(v.at("zeta").size() == 4);
  CHECK(v.at("zeta").at(0).as_int64() == 1);
  CHECK(v.at("zeta").at(1).is_array());
  CHECK(v.at("zeta").at(2).is_object());
  CHECK(v.at("zeta").at(3).at(1).at(0).as_int64() == 3);
  CHECK(v.at("alpha").at("x").is_null());
  CHECK(v.find("nope") == nullptr);
  CHECK(v.contains("mid"));
  // source offsets: where each value starts.
  CHECK(v.source_offset() == 1);
  CHECK(v.at("zeta").source_offset() == 12);
  CHECK(v.at("mid").source_offset() == 64);

  CHECK(fails_at("[1,]", 3, "expected a JSON value, found ']'"));
  CHECK(fails_at("[1 2]", 3, "expected ',' or ']' in an array, found '2'"));
  CHECK(fails_at("[1,", 3, "unterminated array"));
  CHECK(fails_at("[", 1, "unterminated array"));
  CHECK(fails_at(R"({"a":1,})", 7, "expected a string key in an object, found '}'"));
  CHECK(fails_at(R"({"a" 1})", 5, "expected ':' after an object key, found '1'"));
  CHECK(fails_at(R"({"a":1 "b":2})", 7, "expected ',' or '}' in an object"));
  CHECK(fails_at(R"({"a":})", 5, "expected a JSON value, found '}'"));
  CHECK(fails_at(R"({1:2})", 1, "expected a string key"));
  CHECK(fails_at(R"({"a":1)", 6, "unterminated object"));
  CHECK(fails_at(R"({"a":1, "b":2, "a":3})", 15, "duplicate key \"a\""));
  CHECK(fails_at("", 0, "expected a JSON value, found the end of the text"));
  CHECK(fails_at("   ", 3, "found the end of the text"));
  CHECK(fails_at("1 2", 2, "unexpected '2' after the JSON value"));
  CHECK(fails_at("{} x", 3, "unexpected 'x'"));
  CHECK(fails_at("[1]\x01", 3, "unexpected byte 0x01"));
  // A UTF-8 byte-order mark is skipped.
  CHECK(io::parse_json("\xEF\xBB\xBF[1]").at(0).as_int64() == 1);
}

TEST_CASE("error messages name the source, byte, line and column") {
  try {
    io::parse_json("{\n  \"a\": tru\n}", "config.json");
    FAIL("no error");
  } catch (const io::JsonError& e) {
    // "tru" starts at byte 9: line 2, column 8.
    CHECK(std::string(e.what()) == "kiln::io::parse_json: config.json: byte 9 (line 2, column 8): invalid literal (expected true)");
    CHECK(e.offset() == 9);
    CHECK(e.reason() == "invalid literal (expected true)");
  }
  CHECK_THROWS_AS(io::parse_json("["), io::FormatError);  // JsonError is a FormatError...
  CHECK_THROWS_AS(io::parse_json("["), kiln::Error);      // ...and a kiln::Error
}

TEST_CASE("nesting depth and size limits") {
  const auto nested = [](int depth) { return std::string(static_cast<std::size_t>(depth), '[') + std::string(static_cast<std::size_t>(depth), ']'); };
  CHECK(io::parse_json(nested(512)).is_array());
  CHECK(fails_at(nested(513), 512, "nested deeper than the limit of 512"));
  // A hundred thousand brackets fail cleanly instead of exhausting the stack.
  CHECK(fails_at(nested(100000), 512, "nested deeper"));
  std::string objects;
  for (int i = 0; i < 600; ++i) objects += "{\"k\":";
  objects += "1" + std::string(600, '}');
  CHECK(parse_failure(objects).message.find("nested deeper") != std::string::npos);

  io::JsonLimits limits;
  limits.max_depth = 2;
  CHECK_NOTHROW(io::parse_json("[[1], {\"a\": 2}]", "t", limits));
  CHECK(parse_failure("[[1], {\"a\": []}]", limits).offset == 12);
  CHECK(parse_failure("[[[1]]]", limits).offset == 2);
  limits.max_bytes = 5;
  CHECK_NOTHROW(io::parse_json("[1,2]", "t", limits));
  const Failure too_big = parse_failure("[1,23]", limits);
  CHECK(too_big.message.find("the text has 6 bytes, more than the limit of 5") != std::string::npos);
}

TEST_CASE("accessors, building and kind errors") {
  Json o;
  CHECK(o.is_null());
  o.set("b", 1);
  o.set("a", "text");
  o.set("b", Json::array());  // replaces in place
  o.find("b")->push_back(true);
  o.find("b")->push_back(2.5);
  CHECK(io::to_json(o) == R"({"b":[true,2.5],"a":"text"})");
  Json list;
  list.push_back(nullptr);
  list.push_back(std::uint64_t(18446744073709551615ull));  // beyond int64: a double
  list.push_back(-7);
  CHECK(io::to_json(list) == "[null,1.8446744073709552e+19,-7]");
  CHECK(list.size() == 3);
  CHECK(Json(3).size() == 0);

  const Json v = io::parse_json(R"({"n": 2.5, "s": "x"})");
  CHECK_THROWS_WITH_AS(v.at("n").as_string(), doctest::Contains("expected a string, found number (value at byte 6)"),
                       io::JsonError);
  CHECK_THROWS_WITH_AS(v.at("s").as_array(), doctest::Contains("expected an array, found string"), io::JsonError);
  CHECK_THROWS_WITH_AS(v.at("missing"), doctest::Contains("a member called \"missing\""), io::JsonError);
  CHECK_THROWS_WITH_AS(v.at(std::size_t(0)), doctest::Contains("expected an array, found object"), io::JsonError);
  CHECK_THROWS_WITH_AS(io::parse_json("[1]").at(std::size_t(1)), doctest::Contains("index 1 but the array has 1"),
                       io::JsonError);
  CHECK_THROWS_AS(Json(1).set("a", 1), io::JsonError);

  CHECK(io::parse_json("[1, 2.0, \"a\"]") == Json(Json::Array{1, 2.0, "a"}));
  CHECK(io::parse_json("1") == io::parse_json("1.0"));  // same number
  CHECK_FALSE(io::parse_json(R"({"a":1,"b":2})") == io::parse_json(R"({"b":2,"a":1})"));  // order matters
  CHECK_FALSE(io::parse_json("9007199254740993") == io::parse_json("9007199254740992"));
}

TEST_CASE("writer output, compact and indented") {
  CHECK(io::to_json(Json()) == "null");
  CHECK(io::to_json(Json(false)) == "false");
  CHECK(io::to_json(Json(0)) == "0");
  CHECK(io::to_json(Json(-9223372036854775807LL - 1)) == "-9223372036854775808");
  CHECK(io::to_json(Json(0.1)) == "0.1");
  CHECK(io::to_json(Json(3.0)) == "3.0");  // a non-integer number stays one, as in Python
  CHECK(io::to_json(Json(-0.0)) == "-0.0");
  CHECK(io::to_json(Json(1e300)) == "1e+300");
  CHECK(io::to_json(Json(1.0 / 3.0)) == "0.3333333333333333");
  CHECK(io::to_json(Json(5e-324)) == "5e-324");
  // Python's repr(float) layout: plain decimals for exponents -4 ... 15.
  CHECK(io::to_json(Json(1e16)) == "1e+16");
  CHECK(io::to_json(Json(1e15)) == "1000000000000000.0");
  CHECK(io::to_json(Json(-123.456)) == "-123.456");
  CHECK(io::to_json(Json(1e-4)) == "0.0001");
  CHECK(io::to_json(Json(-1.5e-4)) == "-0.00015");
  CHECK(io::to_json(Json(1e-5)) == "1e-05");
  CHECK(io::to_json(Json(1.5e-7)) == "1.5e-07");
  CHECK(io::to_json(Json(12345.0)) == "12345.0");
  CHECK(io::to_json(Json(0.5)) == "0.5");
  CHECK(io::to_json(Json(0.0)) == "0.0");
  CHECK_THROWS_WITH_AS(io::to_json(Json(std::nan(""))), doctest::Contains("NaN"), io::JsonError);
  CHECK_THROWS_WITH_AS(io::to_json(Json(Json::Array{-std::numeric_limits<double>::infinity()})),
                       doctest::Contains("infinity"), io::JsonError);
  // Escapes: '"', '\\' and control characters (lowercase hex, as serde_json and Python write
  // them); '/' and non-ASCII UTF-8 are written as they are.
  CHECK(io::to_json(Json(std::string("q\"b\\s/\b\f\n\r\t\x01\x1f\x7f\xC3\xA9", 16))) ==
        "\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\xC3\xA9\"");
  CHECK(io::to_json(Json(std::string("\0", 1))) == "\"\\u0000\"");
  CHECK(io::to_json(Json::array()) == "[]");
  CHECK(io::to_json(Json::object()) == "{}");

  const Json v = io::parse_json(R"({"a":[1,{"b":null}],"c":{},"d":[]})");
  CHECK(io::to_json(v) == R"({"a":[1,{"b":null}],"c":{},"d":[]})");
  // Python: json.dumps(v, indent=2)
  CHECK(io::to_json(v, 2) == "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": {},\n  \"d\": []\n}");
  CHECK(io::to_json(v, 0) == "{\n\"a\": [\n1,\n{\n\"b\": null\n}\n],\n\"c\": {},\n\"d\": []\n}");
}

namespace {

// A random string of code points from every UTF-8 length, control characters and quotes.
std::string random_text(std::mt19937_64& gen) {
  static const std::uint32_t samples[] = {0x00, 0x01, 0x08, 0x1F, '"', '\\', '/', 'a', 'Z', 0x7F, 0x80, 0xE9, 0x7FF, 0x800,
                                          0xD7FF, 0xE000, 0xFFFD, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF};
  std::string out;
  const int n = static_cast<int>(gen() % 8);
  for (int i = 0; i < n; ++i) {
    const std::uint32_t cp = samples[gen() % (sizeof samples / sizeof samples[0])];
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

Json random_value(std::mt19937_64& gen, int depth) {
  switch (gen() % (depth > 4 ? 5 : 7)) {
    case 0: return Json();
    case 1: return Json(gen() % 2 == 0);
    case 2: return Json(static_cast<std::int64_t>(gen()));
    case 3: {
      double d;
      do {
        d = std::bit_cast<double>(gen());
      } while (!std::isfinite(d));
      return Json(d);
    }
    case 4: return Json(random_text(gen));
    case 5: {
      Json a = Json::array();
      const int n = static_cast<int>(gen() % 5);
      for (int i = 0; i < n; ++i) a.push_back(random_value(gen, depth + 1));
      return a;
    }
    default: {
      Json o = Json::object();
      const int n = static_cast<int>(gen() % 5);
      for (int i = 0; i < n; ++i) o.set(random_text(gen) + std::to_string(i), random_value(gen, depth + 1));
      return o;
    }
  }
}

}  // namespace

TEST_CASE("random values survive writing and reading back, compact and indented") {
  std::mt19937_64 gen(2024);
  for (int i = 0; i < 2000; ++i) {
    const Json v = random_value(gen, 0);
    const std::string text = io::to_json(v);
    const Json back = io::parse_json(text);
    REQUIRE(back == v);
    REQUIRE(io::to_json(back) == text);
    REQUIRE(io::parse_json(io::to_json(v, 3)) == v);
  }
}

TEST_CASE("random mutations of JSON texts parse or throw JsonError, never crash") {
  const std::vector<std::string> seeds = {
      R"({"__metadata__":{"format":"pt"},"h.0.attn.c_attn.weight":{"dtype":"F32","shape":[768,2304],"data_offsets":[0,7077888]}})",
      R"({"!":0,"\"":1,"\u0120the":262,"\ud83d\ude00":5,"caf\u00e9":-1.5e-3,"x":[true,false,null,[],{}]})",
      "[1, -0.5, 2e10, \"a\\nb\", {\"k\": [[[]]]}, \"\xC4\xA0\xE2\x9C\x93\"]"};
  const std::string alphabet = "{}[]\":,.-+eE0123456789 \t\n\\/ubfnrtaxyz\x01\x7f\xC3\xA9\xED\xF0\x9F\xFF";
  std::mt19937_64 gen(99);
  int parsed = 0, rejected = 0;
  for (int i = 0; i < 6000; ++i) {
    std::string text = seeds[static_cast<std::size_t>(i) % seeds.size()];
    const int edits = 1 + static_cast<int>(gen() % 3);
    for (int k = 0; k < edits && !text.empty(); ++k) {
      const std::size_t at = static_cast<std::size_t>(gen() % text.size());
      const char c = alphabet[gen() % alphabet.size()];
      switch (gen() % 4) {
        case 0: text[at] = c; break;
        case 1: text.insert(at, 1, c); break;
        case 2: text.erase(at, 1 + gen() % 3); break;
        case 3: text.resize(at); break;
      }
    }
    try {
      const Json v = io::parse_json(text, "mutated");
      // Whatever parses must write out and read back to the same value.
      REQUIRE(io::parse_json(io::to_json(v)) == v);
      ++parsed;
    } catch (const io::JsonError& e) {
      REQUIRE(e.offset() <= text.size());
      ++rejected;
    }
  }
  CHECK(parsed > 100);
  CHECK(rejected > 1000);
}
