// kiln/expr/math.hpp — scalar math (kiln::math) with the same names as the SIMD packet math of
// the backends, and the elementwise functors (kiln::math::fn) written once for both.
// Builds on core/config.hpp and <cmath>; every function is host/device (KILN_HD).
#pragma once

#include <kiln/core/config.hpp>

#include <cmath>
#include <type_traits>

namespace kiln::math {

// The element type of a scalar or a SIMD packet (packets expose value_type).
template <class V, class = void>
struct scalar_of {
  using type = V;
};
template <class V>
struct scalar_of<V, std::void_t<typename V::value_type>> {
  using type = typename V::value_type;
};
template <class V>
using scalar_t = typename scalar_of<V>::type;

// Scalar versions: one overload set for float and double, usable in CUDA kernels.
#if defined(__CUDA_ARCH__)
#define KILN_MATH_1(name, f_float, f_double)                         \
  KILN_HD inline float name(float x) { return ::f_float(x); }        \
  KILN_HD inline double name(double x) { return ::f_double(x); }
#else
#define KILN_MATH_1(name, f_float, f_double)                         \
  KILN_HD inline float name(float x) { return std::f_double(x); }    \
  KILN_HD inline double name(double x) { return std::f_double(x); }
#endif

KILN_MATH_1(exp, expf, exp)
KILN_MATH_1(expm1, expm1f, expm1)
KILN_MATH_1(log, logf, log)
KILN_MATH_1(log1p, log1pf, log1p)
KILN_MATH_1(tanh, tanhf, tanh)
KILN_MATH_1(erf, erff, erf)
KILN_MATH_1(sqrt, sqrtf, sqrt)
KILN_MATH_1(floor, floorf, floor)
KILN_MATH_1(abs, fabsf, fabs)
#undef KILN_MATH_1

#if defined(__CUDA_ARCH__)
KILN_HD inline float pow(float a, float b) { return ::powf(a, b); }
KILN_HD inline double pow(double a, double b) { return ::pow(a, b); }
KILN_HD inline float rsqrt(float x) { return 1.0f / ::sqrtf(x); }
KILN_HD inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
#else
KILN_HD inline float pow(float a, float b) { return std::pow(a, b); }
KILN_HD inline double pow(double a, double b) { return std::pow(a, b); }
KILN_HD inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
KILN_HD inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
#endif

template <class T>
KILN_HD inline T select(bool m, T a, T b) {
  return m ? a : b;
}
template <class T>
KILN_HD inline T min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
KILN_HD inline T max(T a, T b) {
  return a < b ? b : a;
}
template <class T>
KILN_HD inline T fma(T a, T b, T c) {
  return a * b + c;
}
KILN_HD inline float sigmoid(float x) { return 1.0f / (1.0f + math::exp(-x)); }
KILN_HD inline double sigmoid(double x) { return 1.0 / (1.0 + math::exp(-x)); }

// Elementwise functors: one templated call operator serves scalars (host and device) and SIMD
// packets (found by argument-dependent lookup in the backend's namespace).
namespace fn {

#define KILN_BINARY_FUNCTOR(Name, label, body)                     \
  struct Name {                                                     \
    static constexpr const char* name = label;                      \
    template <class V>                                              \
    KILN_HD V operator()(const V& a, const V& b) const {            \
      using S = scalar_t<V>;                                        \
      (void)sizeof(S);                                              \
      return body;                                                  \
    }                                                               \
  };
#define KILN_UNARY_FUNCTOR(Name, label, body)                      \
  struct Name {                                                     \
    static constexpr const char* name = label;                      \
    template <class V>                                              \
    KILN_HD V operator()(const V& x) const {                        \
      using S = scalar_t<V>;                                        \
      (void)sizeof(S);                                              \
      return body;                                                  \
    }                                                               \
  };

KILN_BINARY_FUNCTOR(Add, "add", a + b)
KILN_BINARY_FUNCTOR(Sub, "sub", a - b)
KILN_BINARY_FUNCTOR(Mul, "mul", a * b)
KILN_BINARY_FUNCTOR(Div, "div", a / b)
// NaN-propagating, like torch.maximum / torch.minimum.
KILN_BINARY_FUNCTOR(Maximum, "maximum", select(a > b, a, select(a != a, a, b)))
KILN_BINARY_FUNCTOR(Minimum, "minimum", select(a < b, a, select(a != a, a, b)))
KILN_BINARY_FUNCTOR(Pow, "pow", pow(a, b))
KILN_BINARY_FUNCTOR(Eq, "eq", select(a == b, V(S(1)), V(S(0))))
KILN_BINARY_FUNCTOR(Ne, "ne", select(a != b, V(S(1)), V(S(0))))
KILN_BINARY_FUNCTOR(Lt, "lt", select(a < b, V(S(1)), V(S(0))))
KILN_BINARY_FUNCTOR(Le, "le", select(a <= b, V(S(1)), V(S(0))))
KILN_BINARY_FUNCTOR(Gt, "gt", select(a > b, V(S(1)), V(S(0))))
KILN_BINARY_FUNCTOR(Ge, "ge", select(a >= b, V(S(1)), V(S(0))))

KILN_UNARY_FUNCTOR(Identity, "identity", x)
KILN_UNARY_FUNCTOR(Neg, "neg", -x)
KILN_UNARY_FUNCTOR(Abs, "abs", abs(x))
KILN_UNARY_FUNCTOR(Exp, "exp", exp(x))
KILN_UNARY_FUNCTOR(Expm1, "expm1", expm1(x))
KILN_UNARY_FUNCTOR(Log, "log", log(x))
KILN_UNARY_FUNCTOR(Log1p, "log1p", log1p(x))
KILN_UNARY_FUNCTOR(Sqrt, "sqrt", sqrt(x))
KILN_UNARY_FUNCTOR(Rsqrt, "rsqrt", rsqrt(x))
KILN_UNARY_FUNCTOR(Square, "square", x * x)
KILN_UNARY_FUNCTOR(Reciprocal, "reciprocal", V(S(1)) / x)
KILN_UNARY_FUNCTOR(Tanh, "tanh", tanh(x))
KILN_UNARY_FUNCTOR(Erf, "erf", erf(x))
KILN_UNARY_FUNCTOR(Sigmoid, "sigmoid", sigmoid(x))
// relu(NaN) = NaN, as in PyTorch.
KILN_UNARY_FUNCTOR(Relu, "relu", select(x < V(S(0)), V(S(0)), x))
// x·sigmoid(x)
KILN_UNARY_FUNCTOR(Silu, "silu", x * sigmoid(x))
// Hendrycks & Gimpel 2016, eq. for the tanh approximation: 0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))
KILN_UNARY_FUNCTOR(GeluTanh, "gelu_tanh",
                   V(S(0.5)) * x *
                       (V(S(1)) + tanh(V(S(0.7978845608028654)) * (x + V(S(0.044715)) * x * x * x))))
// Exact GELU: 0.5x(1 + erf(x/√2))
KILN_UNARY_FUNCTOR(GeluErf, "gelu", V(S(0.5)) * x * (V(S(1)) + erf(x * V(S(0.7071067811865476)))))

#undef KILN_BINARY_FUNCTOR
#undef KILN_UNARY_FUNCTOR

// where(c, a, b): a where c != 0, else b.
struct Where {
  static constexpr const char* name = "where";
  template <class V>
  KILN_HD V operator()(const V& c, const V& a, const V& b) const {
    using S = scalar_t<V>;
    return select(c != V(S(0)), a, b);
  }
};

// x for x >= 0, slope·x below; NaN stays NaN.
template <class T>
struct LeakyRelu {
  static constexpr const char* name = "leaky_relu";
  T slope;
  template <class V>
  KILN_HD V operator()(const V& x) const {
    return select(x < V(T(0)), x * V(slope), x);
  }
};

// Softplus with PyTorch's (beta, threshold): (1/β)·log(1 + exp(βx)), linear above threshold,
// computed as max(βx, 0) + log1p(exp(−|βx|)) so it never overflows.
template <class T>
struct Softplus {
  static constexpr const char* name = "softplus";
  T beta, threshold;
  template <class V>
  KILN_HD V operator()(const V& x) const {
    const V bx = x * V(beta);
    const V soft = (max(bx, V(T(0))) + log1p(exp(-abs(bx)))) / V(beta);
    return select(bx > V(threshold), x, soft);
  }
};

// Clamps into [lo, hi]; NaN stays NaN.
template <class T>
struct Clamp {
  static constexpr const char* name = "clamp";
  T lo, hi;
  template <class V>
  KILN_HD V operator()(const V& x) const {
    return select(x < V(lo), V(lo), select(x > V(hi), V(hi), x));
  }
};

// x raised to a fixed scalar exponent (small integer exponents use multiplication).
template <class T>
struct PowScalar {
  static constexpr const char* name = "pow";
  T exponent;
  template <class V>
  KILN_HD V operator()(const V& x) const {
    if (exponent == T(1)) return x;
    if (exponent == T(2)) return x * x;
    if (exponent == T(3)) return x * x * x;
    if (exponent == T(0.5)) return sqrt(x);
    if (exponent == T(-1)) return V(T(1)) / x;
    return pow(x, V(exponent));
  }
};

}  // namespace fn
}  // namespace kiln::math
