// kiln/io/json.hpp — JSON values (kiln::io::Json, objects keep their key order), an RFC 8259
// parser with depth and size limits whose errors name the source and byte offset, and a writer.
// Builds on core/error.hpp and the standard library (<charconv>, <string>, <vector>).
#pragma once

#include <kiln/core/error.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

namespace kiln::io {

// Bytes that do not follow the format they claim to have (a JSON text, a safetensors file, ...).
// The message names the source (usually a file) and the byte offset of the problem.
class FormatError : public Error {
 public:
  using Error::Error;
};

// A JSON text that cannot be parsed, or a value of another kind than the caller needed.
// offset() is the byte offset of the problem in the text (0 when it is not known);
// reason() is the message without the source and offset.
class JsonError : public FormatError {
 public:
  JsonError(const std::string& message, std::size_t offset, std::string reason)
      : FormatError(message), offset_(offset), reason_(std::move(reason)) {}
  std::size_t offset() const { return offset_; }
  const std::string& reason() const { return reason_; }

 private:
  std::size_t offset_;
  std::string reason_;
};

// One JSON value: null, a boolean, a number, a string, an array or an object.
//
// A number keeps its value as a double and, when its text is an integer (no fraction and no
// exponent) that fits in 64 bits, also the exact integer (is_integer(), as_int64()); 2^53 + 1
// stays exact. Objects are lists of (key, value) members in the order they were read or set;
// keys are unique (the parser rejects duplicates, set() replaces). Strings hold UTF-8.
// Values read by parse_json remember where they started in the text (source_offset()).
class Json {
 public:
  enum class Kind : unsigned char { null, boolean, number, string, array, object };
  using Array = std::vector<Json>;
  using Member = std::pair<std::string, Json>;
  using Object = std::vector<Member>;

  Json() = default;  // null
  Json(std::nullptr_t) {}  // NOLINT: implicit, so `Json v = nullptr;` reads naturally
  Json(bool b) : value_(b) {}  // NOLINT
  Json(double d) : value_(Number{d, 0, false}) {}  // NOLINT
  Json(float f) : Json(static_cast<double>(f)) {}  // NOLINT
  template <std::integral I>
    requires(!std::same_as<I, bool> && !std::same_as<I, char>)
  Json(I i) {  // NOLINT
    if constexpr (std::is_signed_v<I>) {
      value_ = Number{static_cast<double>(i), static_cast<std::int64_t>(i), true};
    } else {
      if (static_cast<std::uint64_t>(i) <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        value_ = Number{static_cast<double>(i), static_cast<std::int64_t>(i), true};
      else
        value_ = Number{static_cast<double>(i), 0, false};
    }
  }
  Json(const char* s) : value_(std::string(s)) {}  // NOLINT
  Json(std::string s) : value_(std::move(s)) {}  // NOLINT
  Json(std::string_view s) : value_(std::string(s)) {}  // NOLINT
  Json(Array a) : value_(std::move(a)) {}  // NOLINT
  Json(Object o) : value_(std::move(o)) {}  // NOLINT

  // An empty array / an empty object.
  static Json array() { return Json(Array{}); }
  static Json object() { return Json(Object{}); }

  Kind kind() const { return static_cast<Kind>(value_.index()); }
  bool is_null() const { return kind() == Kind::null; }
  bool is_bool() const { return kind() == Kind::boolean; }
  bool is_number() const { return kind() == Kind::number; }
  // A number written as an integer that fits in std::int64_t.
  bool is_integer() const { return is_number() && std::get<Number>(value_).is_integer; }
  bool is_string() const { return kind() == Kind::string; }
  bool is_array() const { return kind() == Kind::array; }
  bool is_object() const { return kind() == Kind::object; }

  // The contents; each throws JsonError naming both kinds when the value is of another kind.
  bool as_bool() const { return get<bool>(Kind::boolean); }
  double as_double() const { return get<Number>(Kind::number).value; }
  std::int64_t as_int64() const {
    const Number& n = get<Number>(Kind::number);
    if (!n.is_integer)
      throw_kind_error("an integer that fits in 64 bits, found the number " + number_text(n.value));
    return n.integer;
  }
  const std::string& as_string() const { return get<std::string>(Kind::string); }
  const Array& as_array() const { return get<Array>(Kind::array); }
  Array& as_array() { return get_mutable<Array>(Kind::array); }
  const Object& as_object() const { return get<Object>(Kind::object); }
  Object& as_object() { return get_mutable<Object>(Kind::object); }

  // Elements of an array or members of an object; 0 for the other kinds.
  std::size_t size() const {
    if (is_array()) return std::get<Array>(value_).size();
    if (is_object()) return std::get<Object>(value_).size();
    return 0;
  }

  // The member called `key`, or nullptr when this is not an object or has no such member.
  // A linear search: iterate as_object() to visit every member of a large object.
  const Json* find(std::string_view key) const {
    if (!is_object()) return nullptr;
    for (const Member& m : std::get<Object>(value_))
      if (m.first == key) return &m.second;
    return nullptr;
  }
  Json* find(std::string_view key) {
    return const_cast<Json*>(static_cast<const Json&>(*this).find(key));
  }
  bool contains(std::string_view key) const { return find(key) != nullptr; }

  // The member called `key`; throws JsonError when there is none.
  const Json& at(std::string_view key) const {
    const Object& o = as_object();
    for (const Member& m : o)
      if (m.first == key) return m.second;
    throw_kind_error("a member called \"" + std::string(key) + "\" in the object");
  }
  // Element `i` of an array; throws JsonError when out of range.
  const Json& at(std::size_t i) const {
    const Array& a = as_array();
    if (i >= a.size())
      throw_kind_error("an element at index " + std::to_string(i) + " but the array has " +
                       std::to_string(a.size()));
    return a[i];
  }

  // Sets member `key` (replacing an existing one in place, else appending). A null value
  // becomes an empty object first.
  Json& set(std::string key, Json value) {
    if (is_null()) value_ = Object{};
    Object& o = as_object();
    for (Member& m : o)
      if (m.first == key) {
        m.second = std::move(value);
        return m.second;
      }
    o.emplace_back(std::move(key), std::move(value));
    return o.back().second;
  }
  // Appends to an array. A null value becomes an empty array first.
  Json& push_back(Json value) {
    if (is_null()) value_ = Array{};
    Array& a = as_array();
    a.push_back(std::move(value));
    return a.back();
  }

  // Where parse_json found this value: its byte offset in the text (0 for built values).
  std::size_t source_offset() const { return source_offset_; }

  // Same kind and same contents; objects compare member by member in order; numbers compare
  // their integers when both have one, else their doubles.
  friend bool operator==(const Json& a, const Json& b) {
    if (a.kind() != b.kind()) return false;
    switch (a.kind()) {
      case Kind::null: return true;
      case Kind::boolean: return a.as_bool() == b.as_bool();
      case Kind::number: {
        const Number& x = std::get<Number>(a.value_);
        const Number& y = std::get<Number>(b.value_);
        if (x.is_integer && y.is_integer) return x.integer == y.integer;
        return x.value == y.value;
      }
      case Kind::string: return a.as_string() == b.as_string();
      case Kind::array: return a.as_array() == b.as_array();
      case Kind::object: return a.as_object() == b.as_object();
    }
    return false;
  }

  // "null", "boolean", "number", "string", "array" or "object".
  static const char* kind_name(Kind k) {
    switch (k) {
      case Kind::null: return "null";
      case Kind::boolean: return "boolean";
      case Kind::number: return "number";
      case Kind::string: return "string";
      case Kind::array: return "array";
      case Kind::object: return "object";
    }
    return "?";
  }

 private:
  friend class JsonParser;

  struct Number {
    double value;
    std::int64_t integer;
    bool is_integer;
  };
  // The alternatives follow the order of Kind.
  std::variant<std::monostate, bool, Number, std::string, Array, Object> value_;
  std::size_t source_offset_ = 0;

  static std::string number_text(double v) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
  }

  [[noreturn]] void throw_kind_error(const std::string& wanted) const {
    std::string message = "kiln::io::Json: expected " + wanted;
    if (source_offset_ != 0) message += " (value at byte " + std::to_string(source_offset_) + ")";
    throw JsonError(message, source_offset_, "expected " + wanted);
  }

  template <class V>
  const V& get(Kind k) const {
    if (kind() != k)
      throw_kind_error(std::string(k == Kind::array || k == Kind::object ? "an " : "a ") + kind_name(k) +
                       ", found " + kind_name(kind()));
    return std::get<V>(value_);
  }
  template <class V>
  V& get_mutable(Kind k) {
    (void)get<V>(k);
    return std::get<V>(value_);
  }
};

// Bounds on what parse_json accepts: nesting depth of arrays/objects and the text's size.
struct JsonLimits {
  std::size_t max_depth = 512;
  std::size_t max_bytes = std::size_t(1) << 30;  // 1 GiB
};

// The parser behind parse_json (below); not meant to be used directly.
class JsonParser {
 public:
  JsonParser(std::string_view text, std::string_view source, const JsonLimits& limits)
      : text_(text), source_(source), limits_(limits) {}

  Json parse_document() {
    if (text_.size() > limits_.max_bytes)
      fail(0, "the text has " + std::to_string(text_.size()) + " bytes, more than the limit of " +
                  std::to_string(limits_.max_bytes));
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;
    skip_whitespace();
    if (pos_ == text_.size()) fail(pos_, "expected a JSON value, found the end of the text");
    Json value = parse_value(0);
    skip_whitespace();
    if (pos_ != text_.size())
      fail(pos_, "unexpected " + describe(pos_) + " after the JSON value");
    return value;
  }

 private:
  std::string_view text_;
  std::string_view source_;
  JsonLimits limits_;
  std::size_t pos_ = 0;

  [[noreturn]] void fail(std::size_t offset, const std::string& reason) const {
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i < offset && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw JsonError("kiln::io::parse_json: " + std::string(source_) + ": byte " + std::to_string(offset) +
                        " (line " + std::to_string(line) + ", column " + std::to_string(column) +
                        "): " + reason,
                    offset, reason);
  }

  // "'x'", "byte 0x07" or "the end of the text", for messages.
  std::string describe(std::size_t at) const {
    if (at >= text_.size()) return "the end of the text";
    const unsigned char c = static_cast<unsigned char>(text_[at]);
    if (c >= 0x21 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    static const char hex[] = "0123456789ABCDEF";
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }

  void skip_whitespace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  bool consume_literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Json parse_value(std::size_t depth) {
    const std::size_t start = pos_;
    Json value;
    const char c = text_[pos_];
    switch (c) {
      case '{': value = parse_object(depth + 1); break;
      case '[': value = parse_array(depth + 1); break;
      case '"': value = Json(parse_string()); break;
      case 't':
        if (!consume_literal("true")) fail(pos_, "invalid literal (expected true)");
        value = Json(true);
        break;
      case 'f':
        if (!consume_literal("false")) fail(pos_, "invalid literal (expected false)");
        value = Json(false);
        break;
      case 'n':
        if (!consume_literal("null")) fail(pos_, "invalid literal (expected null)");
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) {
          value = parse_number();
        } else {
          fail(pos_, "expected a JSON value, found " + describe(pos_));
        }
    }
    value.source_offset_ = start;
    return value;
  }

  void enter(std::size_t depth) const {
    if (depth > limits_.max_depth)
      fail(pos_, "arrays and objects nested deeper than the limit of " + std::to_string(limits_.max_depth));
  }

  Json parse_array(std::size_t depth) {
    enter(depth);
    ++pos_;  // '['
    Json::Array elements;
    skip_whitespace();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return Json(std::move(elements));
    }
    for (;;) {
      skip_whitespace();
      if (pos_ == text_.size()) fail(pos_, "unterminated array: expected a value, found the end of the text");
      elements.push_back(parse_value(depth));
      skip_whitespace();
      if (pos_ == text_.size()) fail(pos_, "unterminated array: expected ',' or ']', found the end of the text");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == ']') {
        ++pos_;
        return Json(std::move(elements));
      }
      fail(pos_, "expected ',' or ']' in an array, found " + describe(pos_));
    }
  }

  Json parse_object(std::size_t depth) {
    enter(depth);
    ++pos_;  // '{'
    Json::Object members;
    std::vector<std::size_t> key_offsets;
    skip_whitespace();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return Json(std::move(members));
    }
    for (;;) {
      skip_whitespace();
      if (pos_ == text_.size()) fail(pos_, "unterminated object: expected a key, found the end of the text");
      if (text_[pos_] != '"') fail(pos_, "expected a string key in an object, found " + describe(pos_));
      key_offsets.push_back(pos_);
      std::string key = parse_string();
      skip_whitespace();
      if (pos_ == text_.size() || text_[pos_] != ':')
        fail(pos_, "expected ':' after an object key, found " + describe(pos_));
      ++pos_;
      skip_whitespace();
      if (pos_ == text_.size()) fail(pos_, "expected a value after ':', found the end of the text");
      Json value = parse_value(depth);
      members.emplace_back(std::move(key), std::move(value));
      skip_whitespace();
      if (pos_ == text_.size()) fail(pos_, "unterminated object: expected ',' or '}', found the end of the text");
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (text_[pos_] == '}') {
        ++pos_;
        break;
      }
      fail(pos_, "expected ',' or '}' in an object, found " + describe(pos_));
    }
    check_unique_keys(members, key_offsets);
    return Json(std::move(members));
  }

  void check_unique_keys(const Json::Object& members, const std::vector<std::size_t>& key_offsets) const {
    if (members.size() < 2) return;
    std::vector<std::size_t> order(members.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      if (members[a].first != members[b].first) return members[a].first < members[b].first;
      return a < b;
    });
    for (std::size_t i = 1; i < order.size(); ++i)
      if (members[order[i]].first == members[order[i - 1]].first)
        fail(key_offsets[order[i]], "duplicate key \"" + members[order[i]].first + "\" in an object");
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
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

  // Four hex digits at pos_ (after "\u").
  std::uint32_t parse_hex4() {
    std::uint32_t v = 0;
    for (std::size_t i = pos_; i < pos_ + 4; ++i) {
      if (i >= text_.size()) fail(i, "\\u escape needs four hex digits, found the end of the text");
      const char c = text_[i];
      std::uint32_t d = 0;
      if (c >= '0' && c <= '9') d = static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') d = static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = static_cast<std::uint32_t>(c - 'A' + 10);
      else fail(i, "\\u escape needs four hex digits, found " + describe(i));
      v = v * 16 + d;
    }
    pos_ += 4;
    return v;
  }

  // Length of the valid UTF-8 sequence starting at `at` (a byte >= 0x80), or 0 if invalid.
  std::size_t utf8_sequence_length(std::size_t at) const {
    const auto byte = [&](std::size_t i) -> unsigned {
      return at + i < text_.size() ? static_cast<unsigned char>(text_[at + i]) : 0u;
    };
    const unsigned b0 = byte(0);
    const auto cont = [](unsigned b) { return (b & 0xC0u) == 0x80u; };
    if (b0 >= 0xC2 && b0 <= 0xDF) return cont(byte(1)) ? 2 : 0;
    if (b0 >= 0xE0 && b0 <= 0xEF) {
      const unsigned b1 = byte(1);
      const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80;  // no overlong forms
      const unsigned hi = b0 == 0xED ? 0x9F : 0xBF;  // no UTF-16 surrogates
      return (b1 >= lo && b1 <= hi && cont(byte(2))) ? 3 : 0;
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
      const unsigned b1 = byte(1);
      const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80;  // no overlong forms
      const unsigned hi = b0 == 0xF4 ? 0x8F : 0xBF;  // nothing above U+10FFFF
      return (b1 >= lo && b1 <= hi && cont(byte(2)) && cont(byte(3))) ? 4 : 0;
    }
    return 0;
  }

  std::string parse_string() {
    const std::size_t open = pos_;
    ++pos_;  // '"'
    std::string out;
    for (;;) {
      // Copy the run of plain bytes in one go.
      const std::size_t run = pos_;
      while (pos_ < text_.size()) {
        const unsigned char c = static_cast<unsigned char>(text_[pos_]);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++pos_;
      }
      out.append(text_.data() + run, pos_ - run);
      if (pos_ == text_.size())
        fail(open, "unterminated string (no closing '\"' before the end of the text)");
      const unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail(pos_, "control character " + describe(pos_) + " in a string must be escaped");
      if (c >= 0x80) {
        const std::size_t n = utf8_sequence_length(pos_);
        if (n == 0) fail(pos_, "invalid UTF-8 (" + describe(pos_) + ") in a string");
        out.append(text_.data() + pos_, n);
        pos_ += n;
        continue;
      }
      // A backslash escape.
      ++pos_;
      if (pos_ == text_.size()) fail(pos_, "unterminated escape at the end of the text");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const std::size_t escape_at = pos_ - 2;
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF)
            fail(escape_at, "lone low surrogate \\u" + std::string(text_.substr(escape_at + 2, 4)) +
                                " (it must follow a high surrogate)");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (text_.substr(pos_, 2) != "\\u")
              fail(escape_at, "high surrogate \\u" + std::string(text_.substr(escape_at + 2, 4)) +
                                  " is not followed by a \\u low surrogate");
            pos_ += 2;
            const std::uint32_t low = parse_hex4();
            if (low < 0xDC00 || low > 0xDFFF)
              fail(pos_ - 6, "high surrogate \\u" + std::string(text_.substr(escape_at + 2, 4)) +
                                 " is followed by \\u" + std::string(text_.substr(pos_ - 4, 4)) +
                                 ", which is not a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail(pos_ - 2, "invalid escape '\\" + std::string(1, e) + "' in a string");
      }
    }
  }

  Json parse_number() {
    const std::size_t start = pos_;
    const auto digit = [&](std::size_t i) { return i < text_.size() && text_[i] >= '0' && text_[i] <= '9'; };
    std::size_t i = pos_;
    const bool negative = text_[i] == '-';
    if (negative) ++i;
    if (!digit(i)) fail(i, "expected a digit in a number, found " + describe(i));
    const std::size_t int_begin = i;
    if (text_[i] == '0') {
      ++i;
      if (digit(i)) fail(i, "a number may not have a leading zero");
    } else {
      while (digit(i)) ++i;
    }
    const std::size_t int_end = i;
    std::size_t frac_begin = i, frac_end = i;
    bool integral = true;
    if (i < text_.size() && text_[i] == '.') {
      integral = false;
      ++i;
      if (!digit(i)) fail(i, "expected a digit after '.' in a number, found " + describe(i));
      frac_begin = i;
      while (digit(i)) ++i;
      frac_end = i;
    }
    long long exponent = 0;
    if (i < text_.size() && (text_[i] == 'e' || text_[i] == 'E')) {
      integral = false;
      ++i;
      bool exponent_negative = false;
      if (i < text_.size() && (text_[i] == '+' || text_[i] == '-')) exponent_negative = text_[i++] == '-';
      if (!digit(i)) fail(i, "expected a digit in the exponent of a number, found " + describe(i));
      while (digit(i)) {
        if (exponent < 100000) exponent = exponent * 10 + (text_[i] - '0');
        ++i;
      }
      if (exponent_negative) exponent = -exponent;
    }
    pos_ = i;
    const char* first = text_.data() + start;
    const char* last = text_.data() + i;

    Json value;
    Json::Number number{0.0, 0, false};
    if (integral) {
      std::int64_t n = 0;
      const auto r = std::from_chars(first, last, n);
      if (r.ec == std::errc() && r.ptr == last) {
        number.integer = n;
        number.is_integer = true;
      }
    }
    double d = 0.0;
    const auto r = std::from_chars(first, last, d);
    if (r.ec == std::errc::result_out_of_range) {
      // Decide between overflow and underflow from the decimal exponent of the first
      // non-zero digit.
      long long leading = 0;
      bool found = false;
      for (std::size_t k = int_begin; k < int_end && !found; ++k)
        if (text_[k] != '0') {
          leading = static_cast<long long>(int_end - k) - 1;
          found = true;
        }
      for (std::size_t k = frac_begin; k < frac_end && !found; ++k)
        if (text_[k] != '0') {
          leading = -static_cast<long long>(k - frac_begin) - 1;
          found = true;
        }
      if (found && leading + exponent > 0)
        fail(start, "number " + std::string(first, last) + " is outside the range of a double");
      d = negative ? -0.0 : 0.0;
    } else if (r.ec != std::errc() || r.ptr != last) {
      fail(start, "invalid number " + std::string(first, last));
    }
    number.value = d;
    value.value_ = number;
    return value;
  }
};

// Parses one JSON text (RFC 8259) with nothing but whitespace around it; a leading UTF-8
// byte-order mark is skipped. Strings must be valid UTF-8 and \uXXXX escapes are decoded to
// UTF-8 (a surrogate pair becomes one code point; a lone surrogate is an error). Duplicate
// keys in an object are an error. Numbers outside the range of double are an error; numbers
// too small for a double become a signed zero.
// Errors throw JsonError: "kiln::io::parse_json: SOURCE: byte N (line L, column C): REASON".
inline Json parse_json(std::string_view text, std::string_view source_name = "JSON text",
                       const JsonLimits& limits = {}) {
  return JsonParser(text, source_name, limits).parse_document();
}

namespace detail {

inline void write_json_string(std::string& out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out += '"';
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

inline void write_json_number(std::string& out, const Json& v) {
  if (v.is_integer()) {
    out += std::to_string(v.as_int64());
    return;
  }
  const double d = v.as_double();
  if (!std::isfinite(d))
    throw JsonError("kiln::io::to_json: JSON has no representation for " + std::string(std::isnan(d) ? "NaN" : "infinity"),
                    0, "non-finite number");
  // The shortest digits that read back as d, laid out as Python's repr(float) does: plain
  // decimal for exponents -4 ... 15 (always with a '.'), else scientific ("1e+16", "1.5e-07").
  char buf[40];
  const auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  const std::string_view sci(buf, static_cast<std::size_t>(r.ptr - buf));
  const std::size_t e_at = sci.find('e');
  int exponent = 0;
  std::from_chars(sci.data() + e_at + 1 + (sci[e_at + 1] == '+' ? 1 : 0), sci.data() + sci.size(), exponent);
  if (exponent < -4 || exponent >= 16) {
    out += sci;
    return;
  }
  std::string digits;
  for (std::size_t i = 0; i < e_at; ++i)
    if (sci[i] >= '0' && sci[i] <= '9') digits += sci[i];
  if (sci[0] == '-') out += '-';
  if (exponent < 0) {
    out += "0.";
    out.append(static_cast<std::size_t>(-exponent - 1), '0');
    out += digits;
    return;
  }
  const std::size_t integer_digits = static_cast<std::size_t>(exponent) + 1;
  if (digits.size() <= integer_digits) {
    out += digits;
    out.append(integer_digits - digits.size(), '0');
    out += ".0";
  } else {
    out.append(digits, 0, integer_digits);
    out += '.';
    out.append(digits, integer_digits, std::string::npos);
  }
}

inline void write_json(std::string& out, const Json& v, int indent, int level) {
  const auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent) * static_cast<std::size_t>(lvl), ' ');
  };
  switch (v.kind()) {
    case Json::Kind::null: out += "null"; break;
    case Json::Kind::boolean: out += v.as_bool() ? "true" : "false"; break;
    case Json::Kind::number: write_json_number(out, v); break;
    case Json::Kind::string: write_json_string(out, v.as_string()); break;
    case Json::Kind::array: {
      const Json::Array& a = v.as_array();
      out += '[';
      for (std::size_t i = 0; i < a.size(); ++i) {
        if (i) out += ',';
        newline(level + 1);
        write_json(out, a[i], indent, level + 1);
      }
      if (!a.empty()) newline(level);
      out += ']';
      break;
    }
    case Json::Kind::object: {
      const Json::Object& o = v.as_object();
      out += '{';
      for (std::size_t i = 0; i < o.size(); ++i) {
        if (i) out += ',';
        newline(level + 1);
        write_json_string(out, o[i].first);
        out += indent < 0 ? ":" : ": ";
        write_json(out, o[i].second, indent, level + 1);
      }
      if (!o.empty()) newline(level);
      out += '}';
      break;
    }
  }
}

}  // namespace detail

// The JSON text of `value`. indent < 0 (the default) writes it compactly with no spaces, like
// serde_json and Python's json.dumps(separators=(",", ":")); indent >= 0 puts each element on
// its own line indented by `indent` spaces per level. Strings are written as UTF-8 with '"',
// '\\' and control characters escaped; integers exactly; other numbers with the shortest digits
// that read back as the same double, as Python's repr writes them (3.0, 0.0001, 1e+16). NaN
// and infinity throw JsonError (JSON cannot hold them).
inline std::string to_json(const Json& value, int indent = -1) {
  std::string out;
  detail::write_json(out, value, indent, 0);
  return out;
}

}  // namespace kiln::io
