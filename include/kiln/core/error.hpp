// kiln/core/error.hpp — kiln's exception types and the helpers that build readable messages
// (op name, shapes, values). Builds on core/shape.hpp and the standard library.
#pragma once

#include <kiln/core/shape.hpp>

#include <stdexcept>
#include <string>

namespace kiln {

// Base of every error kiln throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Shapes that do not fit an op: the message names the op and the shapes.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// An argument outside its allowed range (axis, index, step, size).
class ValueError : public Error {
 public:
  using Error::Error;
};

// "[2, 3, 4]"
inline std::string to_string(const Shape& s) {
  std::string out = "[";
  for (int i = 0; i < s.ndim; ++i) {
    if (i) out += ", ";
    out += std::to_string(s.dims[i]);
  }
  return out + "]";
}

// Throws ShapeError: "kiln::OP: MESSAGE: shapes A and B".
[[noreturn]] inline void throw_shape_error(const char* op, const std::string& what, const Shape& a,
                                           const Shape& b) {
  throw ShapeError(std::string("kiln::") + op + ": " + what + ": shapes " + to_string(a) + " and " +
                   to_string(b));
}

[[noreturn]] inline void throw_shape_error(const char* op, const std::string& what, const Shape& a) {
  throw ShapeError(std::string("kiln::") + op + ": " + what + ": shape " + to_string(a));
}

[[noreturn]] inline void throw_value_error(const char* op, const std::string& what) {
  throw ValueError(std::string("kiln::") + op + ": " + what);
}

// Normalises a possibly negative axis against `ndim`; throws naming the op when out of range.
inline int normalize_axis(const char* op, int axis, int ndim) {
  const int a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim)
    throw_value_error(op, "axis " + std::to_string(axis) + " is out of range for a tensor with " +
                              std::to_string(ndim) + " dimension(s)");
  return a;
}

}  // namespace kiln
