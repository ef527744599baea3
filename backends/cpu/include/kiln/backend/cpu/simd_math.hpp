// kiln/backend/cpu/simd_math.hpp — branch-free lane-wise exp, expm1, log, log1p, tanh, erf, pow, sigmoid.
// Builds on kiln/backend/cpu/simd.hpp (packets, bit operations on lanes, fused multiply-add).
#pragma once

#include <kiln/backend/cpu/simd.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace kiln::backend::cpu::simd {

namespace detail {

// Constants of the binary formats. ln2 is split Cody–Waite style: ln2_hi keeps few enough bits
// (16 for float, 42 for double) that n * ln2_hi is exact for every exponent n that occurs.
template <class T>
struct format;

template <>
struct format<float> {
    using uint = std::uint32_t;
    static constexpr int mantissa_bits = 23;
    static constexpr float bias = 127.0f;
    static constexpr uint mantissa_mask = 0x007FFFFFu;
    static constexpr uint one_bits = 0x3F800000u;
    static constexpr float two_pow_mantissa = 8388608.0f;   // 2^23
    static constexpr float round_magic = 12582912.0f;       // 1.5 * 2^23
    static constexpr float ln2_hi = 0.693145751953125f;
    static constexpr float ln2_lo = 1.42860682030941723e-6f;
    static constexpr float log2e = 1.44269504088896341f;
    static constexpr float min_normal = 1.17549435e-38f;
    static constexpr float subnormal_scale = 16777216.0f;   // 2^24
    static constexpr float subnormal_scale_log2 = 24.0f;
    // exp: below exp_lo the result is 0, above exp_hi it is inf.
    static constexpr float exp_lo = -110.0f;
    static constexpr float exp_hi = 89.0f;
    // expm1: below expm1_lo the result rounds to -1.
    static constexpr float expm1_lo = -40.0f;
    // tanh rounds to +-1 beyond tanh_hi; erf rounds to +-1 beyond erf_hi.
    static constexpr float tanh_hi = 9.5f;
    static constexpr float erf_hi = 4.0f;
};

template <>
struct format<double> {
    using uint = std::uint64_t;
    static constexpr int mantissa_bits = 52;
    static constexpr double bias = 1023.0;
    static constexpr uint mantissa_mask = 0x000FFFFFFFFFFFFFull;
    static constexpr uint one_bits = 0x3FF0000000000000ull;
    static constexpr double two_pow_mantissa = 4503599627370496.0;  // 2^52
    static constexpr double round_magic = 6755399441055744.0;       // 1.5 * 2^52
    static constexpr double ln2_hi = 0.6931471805598903;
    static constexpr double ln2_lo = 5.497923018708371e-14;
    static constexpr double log2e = 1.4426950408889634;
    static constexpr double min_normal = 2.2250738585072014e-308;
    static constexpr double subnormal_scale = 18014398509481984.0;  // 2^54
    static constexpr double subnormal_scale_log2 = 54.0;
    static constexpr double exp_lo = -760.0;
    static constexpr double exp_hi = 710.0;
    static constexpr double expm1_lo = -80.0;
    static constexpr double tanh_hi = 20.0;
    static constexpr double erf_hi = 6.0;
};

template <class T>
KILN_FORCEINLINE Vec<T> from_bits(typename format<T>::uint u) {
    return Vec<T>(std::bit_cast<T>(u));
}
template <class T>
KILN_FORCEINLINE Vec<T> bit_and(Vec<T> a, Vec<T> b) {
    return Vec<T>::from_register(isa<T>::bit_and(a.v, b.v));
}
template <class T>
KILN_FORCEINLINE Vec<T> bit_or(Vec<T> a, Vec<T> b) {
    return Vec<T>::from_register(isa<T>::bit_or(a.v, b.v));
}
template <class T>
KILN_FORCEINLINE Vec<T> bit_xor(Vec<T> a, Vec<T> b) {
    return Vec<T>::from_register(isa<T>::bit_xor(a.v, b.v));
}
// Sign bit of s copied onto the non-negative a.
template <class T>
KILN_FORCEINLINE Vec<T> with_sign_of(Vec<T> a, Vec<T> s) {
    return bit_or(a, bit_and(s, Vec<T>(T(-0.0))));
}

// Nearest integer (ties to even) for |x| < 2^(mantissa_bits - 1): adding and removing
// 1.5 * 2^mantissa_bits leaves no fraction bits.
template <class T>
KILN_FORCEINLINE Vec<T> round_nearest(Vec<T> x) {
    const Vec<T> magic(format<T>::round_magic);
    return (x + magic) - magic;
}

// 2^n for integer-valued n with n + bias in [1, 2 * bias]: n + bias lands in the low mantissa
// bits of n + bias + 2^mantissa_bits, and a shift moves it into the exponent field.
template <class T>
KILN_FORCEINLINE Vec<T> pow2i(Vec<T> n) {
    const Vec<T> t = n + Vec<T>(format<T>::two_pow_mantissa + format<T>::bias);
    return Vec<T>::from_register(isa<T>::template shift_left<format<T>::mantissa_bits>(t.v));
}

// a * b = p + error exactly, for p = a * b rounded: one fused multiply-add where the target has
// it, else Dekker's product of halves split off by Veltkamp's method.
template <class T>
KILN_FORCEINLINE Vec<T> product_error(Vec<T> a, Vec<T> b, Vec<T> p) {
    if constexpr (isa<T>::fused_fma) {
        return fma(a, b, -p);
    } else {
        const Vec<T> splitter(std::is_same_v<T, float> ? T(4097) : T(134217729));  // 2^12+1, 2^27+1
        const Vec<T> ca = splitter * a, cb = splitter * b;
        const Vec<T> a_hi = ca - (ca - a), b_hi = cb - (cb - b);
        const Vec<T> a_lo = a - a_hi, b_lo = b - b_hi;
        return ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo;
    }
}

// Horner's rule, highest coefficient first.
template <class T, std::size_t N>
KILN_FORCEINLINE Vec<T> horner(Vec<T> x, const T (&c)[N]) {
    Vec<T> p(c[0]);
    for (std::size_t i = 1; i < N; ++i) p = fma(p, x, Vec<T>(c[i]));
    return p;
}
// Two polynomials of equal degree in one pass: coefficients of a where m is set, else of b.
template <class T, std::size_t N>
KILN_FORCEINLINE Vec<T> horner_select(Mask<T> m, Vec<T> x, const T (&a)[N], const T (&b)[N]) {
    Vec<T> p = select(m, Vec<T>(a[0]), Vec<T>(b[0]));
    for (std::size_t i = 1; i < N; ++i) p = fma(p, x, select(m, Vec<T>(a[i]), Vec<T>(b[i])));
    return p;
}

// exp(r) - 1 on |r| <= ln2/2: Taylor series r + r^2/2! + ... (truncation error below 2^-60
// relative for double with terms up to r^14, below 2^-30 for float with terms up to r^8).
template <class T>
KILN_FORCEINLINE Vec<T> expm1_reduced(Vec<T> r) {
    if constexpr (std::is_same_v<T, float>) {
        static constexpr float c[] = {1.0f / 40320, 1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f};
        return fma(horner(r, c) * r, r, r);
    } else {
        static constexpr double c[] = {1.0 / 87178291200.0, 1.0 / 6227020800.0, 1.0 / 479001600.0,
                                       1.0 / 39916800.0,    1.0 / 3628800.0,    1.0 / 362880.0,
                                       1.0 / 40320.0,       1.0 / 5040.0,       1.0 / 720.0,
                                       1.0 / 120.0,         1.0 / 24.0,         1.0 / 6.0,
                                       0.5};
        return fma(horner(r, c) * r, r, r);
    }
}

// x = n * ln2 + r with n integer and |r| <= ln2/2 (plus rounding); x must be clamped first.
template <class T>
KILN_FORCEINLINE Vec<T> reduce_ln2(Vec<T> x, Vec<T>& n) {
    using F = format<T>;
    n = round_nearest(x * Vec<T>(F::log2e));
    Vec<T> r = fma(n, Vec<T>(-F::ln2_hi), x);
    return fma(n, Vec<T>(-F::ln2_lo), r);
}

// x = 2^e * m with m in [sqrt(1/2), sqrt(2)), for positive normal x (or +inf); e comes back as
// an integer-valued lane. The biased exponent is moved into the low mantissa bits of
// 2^mantissa_bits, where a subtraction turns it into a floating-point value.
template <class T>
KILN_FORCEINLINE Vec<T> split_exponent(Vec<T> x, Vec<T>& e) {
    using F = format<T>;
    using V = Vec<T>;
    const V biased = V::from_register(isa<T>::template shift_right<F::mantissa_bits>(x.v));
    e = (bit_or(biased, V(F::two_pow_mantissa)) - V(F::two_pow_mantissa)) - V(F::bias);
    V m = bit_or(bit_and(x, from_bits<T>(F::mantissa_mask)), from_bits<T>(F::one_bits));
    const Mask<T> big = m > V(T(1.41421356237309504880));
    e = select(big, e + V(T(1)), e);
    return select(big, m * V(T(0.5)), m);
}

// 2 atanh(s) - 2s = 2s^3/3 + 2s^5/5 + ... = s * R with R = s^2 (2/3 + 2 s^2/5 + ...),
// truncated below 2^-30 (float) or 2^-60 (double) relative for |s| <= 0.1716.
template <class T>
KILN_FORCEINLINE Vec<T> atanh_series_tail_factor(Vec<T> z) {
    if constexpr (std::is_same_v<T, float>) {
        static constexpr float c[] = {2.0f / 9, 2.0f / 7, 2.0f / 5, 2.0f / 3};
        return z * horner(z, c);
    } else {
        static constexpr double c[] = {2.0 / 21, 2.0 / 19, 2.0 / 17, 2.0 / 15, 2.0 / 13,
                                       2.0 / 11, 2.0 / 9,  2.0 / 7,  2.0 / 5,  2.0 / 3};
        return z * horner(z, c);
    }
}

// log of a positive normal (or +inf) x: x = 2^e * m, f = m - 1 exact, s = f / (2 + f),
// log(m) = 2 atanh(s) = 2s + s R = f - s (f - R) since 2s = f - s f. `extra` is a small
// correction added to log(m) (used by log1p); `e_offset` is added to the exponent
// (subnormal prescaling).
template <class T>
KILN_FORCEINLINE Vec<T> log_positive(Vec<T> x, Vec<T> e_offset, Vec<T> extra) {
    using F = format<T>;
    using V = Vec<T>;
    V e;
    const V m = split_exponent(x, e);
    e = e + e_offset;
    const V f = m - V(T(1));
    const V s = f / (V(T(2)) + f);
    const V R = atanh_series_tail_factor(s * s);
    const V log_m = fma(-s, f - R, f);
    const V low = fma(e, V(F::ln2_lo), log_m + extra);
    return fma(e, V(F::ln2_hi), low);
}

// log x = hi + lo for positive finite x (subnormals included), |lo| <= ulp(hi)/2, with about
// 2^-57 relative error for double: the exact parts e ln2_hi and 2s are summed exactly, the
// rounding of s = f / (2 + f) is recovered, and only the small series tail is rounded.
template <class T>
KILN_FORCEINLINE Vec<T> log_extended(Vec<T> x, Vec<T>& lo) {
    using F = format<T>;
    using V = Vec<T>;
    const Mask<T> tiny = x < V(F::min_normal);
    V e;
    const V m = split_exponent(select(tiny, x * V(F::subnormal_scale), x), e);
    e = e - select(tiny, V(F::subnormal_scale_log2), V(T(0)));
    const V two(T(2));
    const V f = m - V(T(1));
    const V d_hi = two + f;
    const V d_lo = f - (d_hi - two);  // 2 + f = d_hi + d_lo exactly (|f| < 2)
    const V s_hi = f / d_hi;
    const V q = s_hi * d_hi;
    const V s_lo = (((f - q) - product_error(s_hi, d_hi, q)) - s_hi * d_lo) / d_hi;
    const V tail = s_hi * atanh_series_tail_factor(s_hi * s_hi);
    const V a = e * V(F::ln2_hi);  // exact: ln2_hi has few enough bits
    const V b = two * s_hi;
    const V hi = a + b;
    const V bb = hi - a;
    const V sum_err = (a - (hi - bb)) + (b - bb);  // a + b = hi + sum_err exactly
    const V low = sum_err + (fma(two, s_lo, tail) + e * V(F::ln2_lo));
    const V result = hi + low;
    lo = low - (result - hi);
    return result;
}

}  // namespace detail

// e^x. Overflow gives inf, underflow 0 (through the subnormal range), NaN stays NaN.
template <class T>
KILN_FORCEINLINE Vec<T> exp(Vec<T> x) {
    using F = detail::format<T>;
    using V = Vec<T>;
    const V xc = min(max(x, V(F::exp_lo)), V(F::exp_hi));
    V n;
    const V r = detail::reduce_ln2(xc, n);
    const V p = detail::expm1_reduced(r) + V(T(1));
    // 2^n in two factors so that results in the subnormal range and up to the overflow
    // threshold come out with a single rounding.
    const V n1 = floor(n * V(T(0.5)));
    const V y = p * detail::pow2i(n1) * detail::pow2i(n - n1);
    return select(x != x, x, y);
}

// e^x - 1, accurate near 0: with x = n ln2 + r and t = 2^(n-1),
// e^x - 1 = 2 (t * expm1(r) + (t - 1/2)), where t - 1/2 is exact for the n that matter.
template <class T>
KILN_FORCEINLINE Vec<T> expm1(Vec<T> x) {
    using F = detail::format<T>;
    using V = Vec<T>;
    const V xc = min(max(x, V(F::expm1_lo)), V(F::exp_hi));
    V n;
    const V r = detail::reduce_ln2(xc, n);
    const V p = detail::expm1_reduced(r);
    const V t = detail::pow2i(n - V(T(1)));
    const V y = select(n == V(T(0)), p, V(T(2)) * fma(t, p, t - V(T(0.5))));
    return select((x != x) | (x == V(T(0))), x, y);
}

// Natural log. log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, subnormals handled.
template <class T>
KILN_FORCEINLINE Vec<T> log(Vec<T> x) {
    using F = detail::format<T>;
    using V = Vec<T>;
    const Mask<T> tiny = x < V(F::min_normal);
    const V xs = select(tiny, x * V(F::subnormal_scale), x);
    const V off = select(tiny, V(-F::subnormal_scale_log2), V(T(0)));
    V y = detail::log_positive(xs, off, V(T(0)));
    const T inf = std::numeric_limits<T>::infinity();
    y = select(x == V(inf), x, y);
    y = select(x == V(T(0)), V(-inf), y);
    return select(!(x >= V(T(0))), V(std::numeric_limits<T>::quiet_NaN()), y);
}

// log(1 + x), accurate near 0: u = 1 + x rounded, and the rounding error x - (u - 1),
// divided by u, corrects log(u).
template <class T>
KILN_FORCEINLINE Vec<T> log1p(Vec<T> x) {
    using V = Vec<T>;
    const V one(T(1));
    const V u = one + x;
    const V correction = (x - (u - one)) / u;
    V y = detail::log_positive(u, V(T(0)), correction);
    const T inf = std::numeric_limits<T>::infinity();
    y = select(x == V(inf), x, y);
    y = select(u == V(T(0)), V(-inf), y);
    y = select(x == V(T(0)), x, y);
    return select(!(x >= V(T(-1))), V(std::numeric_limits<T>::quiet_NaN()), y);
}

// tanh: |x| < 0.625: x * P(x^2), P a Chebyshev fit of tanh(x)/x in x^2; otherwise
// 1 - 2 / (e^(2|x|) + 1) with the sign of x.
template <class T>
KILN_FORCEINLINE Vec<T> tanh(Vec<T> x) {
    using F = detail::format<T>;
    using V = Vec<T>;
    const V ax = abs(x);
    const V z = x * x;
    V small;
    if constexpr (std::is_same_v<T, float>) {
        static constexpr float c[] = {-5.657135184e-3f, 2.058819145e-2f, -5.372010766e-2f,
                                      1.333111406e-1f,  -3.333325986e-1f, 9.99999996e-1f};
        small = x * detail::horner(z, c);
    } else {
        static constexpr double c[] = {-1.6001499513001041087e-5, 7.698563199045422871e-5,
                                       -2.2841018529512850373e-4, 5.8623143160506117835e-4,
                                       -1.454929385854390258e-3,  3.5919825215839249649e-3,
                                       -8.8632200212560951287e-3, 2.1869487483410595755e-2,
                                       -5.3968253925945695567e-2, 1.3333333333245252897e-1,
                                       -3.3333333333332613516e-1, 9.9999999999999999024e-1};
        small = x * detail::horner(z, c);
    }
    const V e = exp(V(T(2)) * min(ax, V(F::tanh_hi)));
    const V large = detail::with_sign_of(V(T(1)) - V(T(2)) / (e + V(T(1))), x);
    const V y = select(ax < V(T(0.625)), small, large);
    return select(x != x, x, y);
}

// Logistic sigmoid 1 / (1 + e^-x), computed as e^-|x| over 1 + e^-|x| on the negative side so
// that neither tail loses precision.
template <class T>
KILN_FORCEINLINE Vec<T> sigmoid(Vec<T> x) {
    using V = Vec<T>;
    const V e = exp(-abs(x));
    return select(x < V(T(0)), e, V(T(1))) / (V(T(1)) + e);
}

// Error function. |x| < 1: x + x P(x^2), P a Chebyshev fit of erf(x)/x - 1 in x^2. |x| >= 1:
// 1 - erfc(|x|) with erfc(x) = e^(-x^2) * u * Q(u), u = 1/x, Q a Chebyshev fit of
// erfc(x) e^(x^2) x in u - centre (two pieces, split at x = 2, for double); e^(-x^2) uses the
// exact product error of x^2 so that it keeps full precision. Coefficients fitted here with
// mpmath.chebyfit against mpmath's erfc.
template <class T>
KILN_FORCEINLINE Vec<T> erf(Vec<T> x) {
    using F = detail::format<T>;
    using V = Vec<T>;
    const V ax = abs(x);
    const V z = x * x;
    const V xl = max(min(ax, V(F::erf_hi)), V(T(1)));
    const V u = V(T(1)) / xl;
    V small, q;
    if constexpr (std::is_same_v<T, float>) {
        // erf(x)/x - 1 in z = x^2 on [0, 1]
        static constexpr float cs[] = {7.875875063e-5f, -8.016864287e-4f, 5.189087423e-3f, -2.685421201e-2f,
                                       1.128359472e-1f, -3.761262667e-1f, 1.283791658e-1f};
        // erfc(x) e^(x^2) x in w = u - 0.625 on [-0.375, 0.375]
        static constexpr float cl[] = {-4.782262702e-2f, 5.492168508e-2f,  -2.460380006e-2f, -1.123284912e-2f,
                                       4.961214224e-2f,  -7.798336436e-2f, 7.210193058e-2f,  -1.295486959e-3f,
                                       -1.715856514e-1f, 4.895247903e-1f};
        small = fma(x, detail::horner(z, cs), x);
        q = detail::horner(u - V(0.625f), cl);
    } else {
        static constexpr double cs[] = {
            -7.7958988270021422416e-10, 1.3720064546777685604e-8, -1.6208483801871705902e-7,
            1.644742470331736241e-6,    -1.4924736907419660338e-5, 1.2055294904839707917e-4,
            -8.5483259753896920806e-4,  5.2239776071164227321e-3,  -2.686617064323777036e-2,
            1.1283791670945006266e-1,   -3.7612638903183540438e-1, 1.2837916709551256654e-1};
        // x in [2, 6]: w = u - 1/3 on [-1/6, 1/6]
        static constexpr double far[] = {
            -3.9055020306055045359,    4.8882406142503616093,     -2.5226137985197709319,
            1.7226400879233359667e-1,  9.2192721842594245356e-1,  -9.5816389097247598735e-1,
            4.8309537057298730495e-1,  1.8884051250474496169e-2,  -2.8477053349362971576e-1,
            2.759999437407006866e-1,   -9.6657674378528741585e-2, -1.0262206212061609213e-1,
            1.9568021007956413188e-1,  -1.1537284741590682872e-1, -1.4295934043884222576e-1,
            5.3700345354416988716e-1};
        // x in [1, 2]: w = u - 3/4 on [-1/4, 1/4]
        static constexpr double near[] = {
            1.0259384173708948658e-2,  -7.6787139729619190533e-3, 1.5815702855691240106e-4,
            5.8970681128926900205e-3,  -1.1576818227021732078e-2, 1.5757978082473824947e-2,
            -1.6227789665166523575e-2, 1.1129321121083586712e-2,  5.6081635490341823569e-4,
            -1.8116944339171765196e-2, 3.7688719969808094731e-2,  -5.0465735201369912967e-2,
            4.0293199742655398417e-2,  1.9347872628538867299e-2,  -1.6908097778547486641e-1,
            4.6817959203854046717e-1};
        small = fma(x, detail::horner(z, cs), x);
        const Mask<T> is_far = u < V(0.5);
        q = detail::horner_select(is_far, u - select(is_far, V(1.0 / 3.0), V(0.75)), far, near);
    }
    const V sq = xl * xl;
    const V sq_err = detail::product_error(xl, xl, sq);  // xl^2 = sq + sq_err exactly
    const V gauss = exp(-sq) * (V(T(1)) - sq_err);
    const V large = detail::with_sign_of(V(T(1)) - gauss * u * q, x);
    const V y = select(ax < V(T(1)), small, large);
    return select(x != x, x, y);
}

namespace detail {

// pow on |x| through exp(y log|x|), then the sign and special cases of std::pow.
template <class T>
KILN_FORCEINLINE Vec<T> pow_finish(Vec<T> x, Vec<T> y, Vec<T> magnitude) {
    using V = Vec<T>;
    const T inf = std::numeric_limits<T>::infinity();
    const V half_y = y * V(T(0.5));
    const Mask<T> y_int = floor(y) == y;
    const Mask<T> y_odd = y_int & (floor(half_y) != half_y);
    // a negative base with an odd integer exponent keeps its sign (also for -0 and -inf)
    V r = bit_or(magnitude, select(y_odd, bit_and(x, V(T(-0.0))), V(T(0))));
    r = select((x < V(T(0))) & (x > V(-inf)) & !y_int, V(std::numeric_limits<T>::quiet_NaN()), r);
    const Mask<T> one = (x == V(T(1))) | (y == V(T(0))) | ((x == V(T(-1))) & (abs(y) == V(inf)));
    return select(one, V(T(1)), r);
}

}  // namespace detail

// x^y with std::pow's special cases: pow(x, +-0) = 1 and pow(1, y) = 1 even for NaN,
// NaN for x < 0 and non-integer y, the sign of x for odd integer y, zeros and infinities
// as in C. float is computed through double lanes (error below 1 ulp); double through
// exp(y * log|x|) with log|x| and the product y log|x| carried in two parts, which keeps the
// error within about 2 ulp for moderate results and 3.5 ulp up to the overflow and underflow
// thresholds.
template <class T>
KILN_FORCEINLINE Vec<T> pow(Vec<T> x, Vec<T> y) {
    using V = Vec<T>;
    if constexpr (std::is_same_v<T, float>) {
        using D = Vec<double>;
        const V ax = abs(x);
        V magnitude;
        if constexpr (V::size == 1) {
            const D l = log(D(static_cast<double>(hsum(ax)))) * D(static_cast<double>(hsum(y)));
            magnitude = V(static_cast<float>(hsum(exp(l))));
        } else {
            const D lo = exp(log(D::from_register(detail::widen_low(ax.v))) *
                             D::from_register(detail::widen_low(y.v)));
            const D hi = exp(log(D::from_register(detail::widen_high(ax.v))) *
                             D::from_register(detail::widen_high(y.v)));
            magnitude = V::from_register(detail::narrow(lo.v, hi.v));
        }
        return detail::pow_finish(x, y, magnitude);
    } else {
        const T inf = std::numeric_limits<T>::infinity();
        const V ax = abs(x);
        V lo;
        V hi = detail::log_extended(ax, lo);
        const Mask<T> special = (ax == V(T(0))) | (ax == V(inf)) | (ax != ax);
        hi = select(ax == V(T(0)), V(-inf), select(special, ax, hi));
        lo = select(special, V(T(0)), lo);
        const V p = y * hi;
        V p_err = detail::product_error(y, hi, p) + y * lo;  // y (hi + lo) = p + p_err to about 2^-57 relative
        p_err = select(abs(p_err) < V(T(1)), p_err, V(T(0)));  // inf or NaN once p overflows
        const V e = exp(p);
        return detail::pow_finish(x, y, select(e == V(inf), e, fma(e, p_err, e)));
    }
}

// pow with a scalar base or exponent, broadcast to every lane.
template <class T>
KILN_FORCEINLINE Vec<T> pow(Vec<T> x, std::type_identity_t<T> y) {
    return pow(x, Vec<T>(y));
}
template <class T>
KILN_FORCEINLINE Vec<T> pow(std::type_identity_t<T> x, Vec<T> y) {
    return pow(Vec<T>(x), y);
}

}  // namespace kiln::backend::cpu::simd
