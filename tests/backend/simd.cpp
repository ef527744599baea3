// Tests for kiln/backend/cpu/simd.hpp: packet arithmetic, masks, partial loads/stores, reductions,
// and every vectorized math function against the long-double std:: function (max ulp error).
#include <kiln/backend/cpu/simd.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace simd = kiln::backend::cpu::simd;

namespace {

template <class T>
using uint_for = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

// Same value, same sign of zero, or both NaN.
template <class T>
bool same(T a, T b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
    return a == b && std::signbit(a) == std::signbit(b);
}

template <class T>
std::vector<T> lanes(simd::Vec<T> v) {
    std::vector<T> out(simd::Vec<T>::size);
    v.store(out.data());
    return out;
}

template <class T>
std::vector<bool> lanes(simd::Mask<T> m) {
    const auto ones = lanes(select(m, simd::Vec<T>(1), simd::Vec<T>(0)));
    std::vector<bool> out;
    for (T x : ones) out.push_back(x == T(1));
    return out;
}

// 1, 2, ..., size (or a + k * step).
template <class T>
simd::Vec<T> iota(T a = 1, T step = 1) {
    std::vector<T> buf(simd::Vec<T>::size);
    for (int i = 0; i < simd::Vec<T>::size; ++i) buf[i] = a + step * T(i);
    return simd::Vec<T>::load(buf.data());
}

// Applies f packet by packet (the tail through load_partial / store_partial).
template <class T, class F>
std::vector<T> apply(F f, const std::vector<T>& xs) {
    using V = simd::Vec<T>;
    std::vector<T> ys(xs.size());
    std::size_t i = 0;
    for (; i + V::size <= xs.size(); i += V::size) f(V::load(xs.data() + i)).store(ys.data() + i);
    const int rest = static_cast<int>(xs.size() - i);
    if (rest > 0) f(V::load_partial(xs.data() + i, rest)).store_partial(ys.data() + i, rest);
    return ys;
}

// Error of got against the exact value ref in units of the last place of ref rounded to T
// (denorm_min below the normal range). An infinite got counts as 2^(max_exponent), one ulp
// past the largest finite number, so overflow right at the threshold costs about an ulp.
template <class T>
double ulp_error(T got, long double ref) {
    if (std::isnan(ref)) return std::isnan(got) ? 0.0 : 1e30;
    if (std::isnan(got)) return 1e30;
    const long double big = std::ldexp(1.0L, std::numeric_limits<T>::max_exponent);
    if (std::isinf(ref) || std::fabs(ref) >= big) {
        return (std::isinf(got) && std::signbit(got) == std::signbit(ref)) ? 0.0 : 1e30;
    }
    long double g = got;
    if (std::isinf(got)) g = std::copysign(big, static_cast<long double>(got));
    const long double a = std::fabs(ref);
    long double ulp = std::numeric_limits<T>::denorm_min();
    if (a >= std::numeric_limits<T>::min()) {
        int e = 0;
        std::frexp(a, &e);
        ulp = std::ldexp(1.0L, e - std::numeric_limits<T>::digits);
    }
    return static_cast<double>(std::fabs(g - ref) / ulp);
}

template <class T>
struct Worst {
    double ulp = 0.0;
    T x = 0;
    T y = 0;
};

template <class T, class F, class R>
Worst<T> measure(F f, R ref, const std::vector<T>& xs) {
    Worst<T> w;
    const std::vector<T> ys = apply<T>(f, xs);
    for (std::size_t i = 0; i < xs.size(); ++i) {
        const double e = ulp_error<T>(ys[i], ref(static_cast<long double>(xs[i])));
        if (e > w.ulp) w = {e, xs[i], ys[i]};
    }
    return w;
}

// Dense even grid over [lo, hi], uniform random values in [lo, hi], and random bit patterns
// that fall in [lo, hi] (every magnitude, subnormals included; fewer when the range is narrow).
template <class T>
std::vector<T> sweep(T lo, T hi, int grid = 20000, int random = 20000) {
    std::vector<T> xs;
    for (int i = 0; i <= grid; ++i) xs.push_back(lo + (hi - lo) * (T(i) / T(grid)));
    std::mt19937_64 rng(12345);
    std::uniform_real_distribution<T> uniform(lo, hi);
    for (int i = 0; i < random / 2; ++i) xs.push_back(uniform(rng));
    for (int tries = 0, kept = 0; tries < 20 * random && kept < random / 2; ++tries) {
        const T x = std::bit_cast<T>(static_cast<uint_for<T>>(rng()));
        if (std::isfinite(x) && x >= lo && x <= hi) {
            xs.push_back(x);
            ++kept;
        }
    }
    return xs;
}

template <class T>
std::vector<T> specials() {
    using L = std::numeric_limits<T>;
    return {T(0),         -T(0),          L::infinity(), -L::infinity(), L::quiet_NaN(), L::denorm_min(),
            -L::denorm_min(), L::min(),   -L::min(),     L::max(),       -L::max(),      T(1),
            T(-1),        T(0.5),         T(-0.5),       T(2),           T(-2),          L::epsilon(),
            -L::epsilon()};
}

template <class T, class F, class R>
void check_accuracy(const char* name, F f, R ref, std::vector<T> xs, double tol) {
    for (T s : specials<T>()) xs.push_back(s);
    const Worst<T> w = measure<T>(f, ref, xs);
    const std::string what = std::string(name) + (sizeof(T) == 4 ? " float " : " double ") + KILN_SIMD_NAME;
    INFO(what, ": max ulp ", w.ulp, " at x = ", static_cast<double>(w.x), " giving ", static_cast<double>(w.y));
    CHECK(w.ulp <= tol);
}

template <class T>
constexpr T lim_max = std::numeric_limits<T>::max();

}  // namespace

TEST_CASE("simd: instruction set and widths") {
    const std::string name = KILN_SIMD_NAME;
    CHECK((name == "avx512" || name == "avx2" || name == "neon" || name == "scalar"));
    CHECK(simd::Vec<float>::size == simd::float_width);
    CHECK(simd::Vec<double>::size == simd::double_width);
    CHECK(simd::width<float> == simd::float_width);
    if (name != "scalar") {
        CHECK(simd::float_width * 4 == simd::register_bytes);
        CHECK(simd::double_width * 8 == simd::register_bytes);
    }
}

TEST_CASE_TEMPLATE("simd: load, store, broadcast, zero", T, float, double) {
    using V = simd::Vec<T>;
    std::vector<T> src(V::size), dst(V::size + 2, T(-7));
    for (int i = 0; i < V::size; ++i) src[i] = T(i) * T(1.5) - T(3);
    V::load(src.data()).store(dst.data() + 1);  // unaligned on both sides
    CHECK(dst[0] == T(-7));
    CHECK(dst[V::size + 1] == T(-7));
    for (int i = 0; i < V::size; ++i) CHECK(dst[i + 1] == src[i]);
    for (T x : lanes(V::broadcast(T(2.25)))) CHECK(x == T(2.25));
    for (T x : lanes(V(T(-4)))) CHECK(x == T(-4));
    for (T x : lanes(V::zero())) CHECK(same(x, T(0)));
}

TEST_CASE_TEMPLATE("simd: partial loads and stores touch only n lanes", T, float, double) {
    using V = simd::Vec<T>;
    for (int n = 0; n < V::size; ++n) {
        std::vector<T> src(V::size + 4, T(99));
        for (int i = 0; i < n; ++i) src[i] = T(i + 1);
        const auto got = lanes(V::load_partial(src.data(), n));
        for (int i = 0; i < V::size; ++i) CHECK(got[i] == (i < n ? T(i + 1) : T(0)));

        std::vector<T> dst(V::size + 4, T(-1));
        iota<T>(T(10)).store_partial(dst.data(), n);
        for (int i = 0; i < V::size + 4; ++i) CHECK(dst[i] == (i < n ? T(10 + i) : T(-1)));
    }
}

TEST_CASE_TEMPLATE("simd: arithmetic lane by lane", T, float, double) {
    using V = simd::Vec<T>;
    const V a = iota<T>(T(1));           // 1, 2, 3, ...
    const V b = iota<T>(T(-2), T(0.5));  // -2, -1.5, -1, ...
    const auto la = lanes(a), lb = lanes(b);
    const auto sum = lanes(a + b), diff = lanes(a - b), prod = lanes(a * b), quot = lanes(a / b);
    const auto neg = lanes(-a), mixed = lanes(a * T(2) + T(1)), mixed2 = lanes(T(10) - a);
    const auto mn = lanes(min(a, b)), mx = lanes(max(a, b)), ab = lanes(abs(b));
    const auto fm = lanes(fma(a, b, V(T(0.25)))), sq = lanes(sqrt(a)), rs = lanes(rsqrt(a));
    const auto fl = lanes(floor(b * T(1.3)));
    for (int i = 0; i < V::size; ++i) {
        CHECK(sum[i] == la[i] + lb[i]);
        CHECK(diff[i] == la[i] - lb[i]);
        CHECK(prod[i] == la[i] * lb[i]);
        CHECK(quot[i] == la[i] / lb[i]);
        CHECK(neg[i] == -la[i]);
        CHECK(mixed[i] == la[i] * T(2) + T(1));
        CHECK(mixed2[i] == T(10) - la[i]);
        CHECK(mn[i] == std::min(la[i], lb[i]));
        CHECK(mx[i] == std::max(la[i], lb[i]));
        CHECK(ab[i] == std::fabs(lb[i]));
        CHECK(fm[i] == la[i] * lb[i] + T(0.25));  // exact either way for these values
        CHECK(sq[i] == std::sqrt(la[i]));
        CHECK(rs[i] == T(1) / std::sqrt(la[i]));  // full precision, not the hardware estimate
        CHECK(fl[i] == std::floor(lb[i] * T(1.3)));
    }
    CHECK(same(lanes(-V(T(0)))[0], -T(0)));
    CHECK(lanes(floor(V(T(-0.5))))[0] == T(-1));
    CHECK(lanes(floor(V(T(2.0))))[0] == T(2));

    V c = a;
    c += b;
    c *= V(T(2));
    c -= T(1);
    c /= T(4);
    const auto lc = lanes(c);
    for (int i = 0; i < V::size; ++i) CHECK(lc[i] == ((la[i] + lb[i]) * T(2) - T(1)) / T(4));
}

TEST_CASE_TEMPLATE("simd: fma rounds once where the target fuses", T, float, double) {
    using V = simd::Vec<T>;
    const T e = std::numeric_limits<T>::epsilon();
    // (1 + e)(1 - e) - 1 = -e^2: fused gives -e^2, unfused gives 0.
    const T got = lanes(fma(V(T(1) + e), V(T(1) - e), V(T(-1))))[0];
    const std::string name = KILN_SIMD_NAME;
    if (name != "scalar") CHECK(got == -e * e);
    else CHECK((got == -e * e || got == T(0)));
}

TEST_CASE_TEMPLATE("simd: comparisons, masks and select", T, float, double) {
    using V = simd::Vec<T>;
    const T nan = std::numeric_limits<T>::quiet_NaN();
    std::vector<T> av(V::size), bv(V::size);
    for (int i = 0; i < V::size; ++i) {
        av[i] = T(i % 3);             // 0 1 2 0 1 2 ...
        bv[i] = (i == 1) ? nan : T(1);  // lane 1 holds NaN
    }
    const V a = V::load(av.data()), b = V::load(bv.data());
    const auto lt = lanes(a < b), le = lanes(a <= b), gt = lanes(a > b), ge = lanes(a >= b);
    const auto eq = lanes(a == b), ne = lanes(a != b);
    const auto both = lanes((a < b) | (a > b)), neither = lanes(!((a < b) | (a > b)));
    const auto band = lanes((a >= b) & (a <= b));
    const auto sel = lanes(select(a < b, a, V(T(-5))));
    for (int i = 0; i < V::size; ++i) {
        CAPTURE(i);
        CHECK(lt[i] == (av[i] < bv[i]));
        CHECK(le[i] == (av[i] <= bv[i]));
        CHECK(gt[i] == (av[i] > bv[i]));
        CHECK(ge[i] == (av[i] >= bv[i]));
        CHECK(eq[i] == (av[i] == bv[i]));
        CHECK(ne[i] == (av[i] != bv[i]));  // true for the NaN lane
        CHECK(both[i] == (av[i] != bv[i] && !std::isnan(bv[i])));
        CHECK(neither[i] == !both[i]);
        CHECK(band[i] == (av[i] == bv[i]));
        CHECK(sel[i] == (av[i] < bv[i] ? av[i] : T(-5)));
    }
    CHECK(any(a == a));
    CHECK(all(a == a));
    CHECK_FALSE(any(a != a));
    CHECK(all(!(a != a)));
    CHECK(any(b != b) == (V::size > 1));
    CHECK(all(a < V(T(3))));
    CHECK(all(a < V(T(2))) == (V::size <= 2));
}

TEST_CASE_TEMPLATE("simd: horizontal sum, max and min", T, float, double) {
    using V = simd::Vec<T>;
    std::vector<T> v(V::size);
    T sum = 0, mx = -1e30, mn = 1e30;
    for (int i = 0; i < V::size; ++i) {
        v[i] = T((i * 7) % 5) - T(i) * T(0.25);
        sum += v[i];
        mx = std::max(mx, v[i]);
        mn = std::min(mn, v[i]);
    }
    const V x = V::load(v.data());
    CHECK(hsum(x) == doctest::Approx(sum));
    CHECK(hmax(x) == mx);
    CHECK(hmin(x) == mn);
    CHECK(hsum(V(T(1))) == T(V::size));
    CHECK(hmax(iota<T>()) == T(V::size));
    CHECK(hmin(iota<T>()) == T(1));
}

// ---- math: accuracy against the long-double std:: functions -------------------------------

TEST_CASE_TEMPLATE("simd math: exp", T, float, double) {
    const T over = std::is_same_v<T, float> ? T(89) : T(710);
    const T under = std::is_same_v<T, float> ? T(-104) : T(-746);
    auto f = [](auto v) { return exp(v); };
    auto r = [](long double x) { return std::exp(x); };
    check_accuracy<T>("exp", f, r, sweep<T>(under, over), 4);
    check_accuracy<T>("exp near 0", f, r, sweep<T>(T(-1), T(1)), 4);
    check_accuracy<T>("exp subnormal results", f, r, sweep<T>(under, under * T(0.86)), 4);
    check_accuracy<T>("exp all finite", f, r, sweep<T>(-lim_max<T>, lim_max<T>, 0, 20000), 4);
    const T inf = std::numeric_limits<T>::infinity();
    const auto y = apply<T>(f, {T(0), -T(0), inf, -inf, std::numeric_limits<T>::quiet_NaN(), T(1000),
                                T(-1000), lim_max<T>, -lim_max<T>});
    CHECK(y[0] == T(1));
    CHECK(y[1] == T(1));
    CHECK(y[2] == inf);
    CHECK(same(y[3], T(0)));
    CHECK(std::isnan(y[4]));
    CHECK(y[5] == inf);
    CHECK(same(y[6], T(0)));
    CHECK(y[7] == inf);
    CHECK(same(y[8], T(0)));
}

TEST_CASE_TEMPLATE("simd math: expm1", T, float, double) {
    auto f = [](auto v) { return expm1(v); };
    auto r = [](long double x) { return std::expm1(x); };
    const T over = std::is_same_v<T, float> ? T(89) : T(710);
    check_accuracy<T>("expm1", f, r, sweep<T>(T(-60), over), 4);
    check_accuracy<T>("expm1 near 0", f, r, sweep<T>(T(-1), T(1)), 4);
    check_accuracy<T>("expm1 tiny", f, r, sweep<T>(T(-1e-6), T(1e-6)), 4);
    check_accuracy<T>("expm1 all finite", f, r, sweep<T>(-lim_max<T>, lim_max<T>, 0, 20000), 4);
    const T inf = std::numeric_limits<T>::infinity();
    const T dn = std::numeric_limits<T>::denorm_min();
    const auto y = apply<T>(f, {T(0), -T(0), inf, -inf, std::numeric_limits<T>::quiet_NaN(), dn, -dn});
    CHECK(same(y[0], T(0)));
    CHECK(same(y[1], -T(0)));
    CHECK(y[2] == inf);
    CHECK(y[3] == T(-1));
    CHECK(std::isnan(y[4]));
    CHECK(y[5] == dn);
    CHECK(y[6] == -dn);
}

TEST_CASE_TEMPLATE("simd math: log", T, float, double) {
    auto f = [](auto v) { return log(v); };
    auto r = [](long double x) { return std::log(x); };
    check_accuracy<T>("log", f, r, sweep<T>(T(0), lim_max<T>), 4);
    check_accuracy<T>("log near 1", f, r, sweep<T>(T(0.5), T(2)), 4);
    check_accuracy<T>("log subnormal", f, r, sweep<T>(T(0), std::numeric_limits<T>::min() * T(2)), 4);
    const T inf = std::numeric_limits<T>::infinity();
    const auto y = apply<T>(f, {T(0), -T(0), inf, -inf, std::numeric_limits<T>::quiet_NaN(), T(-1), T(1),
                                -std::numeric_limits<T>::denorm_min()});
    CHECK(y[0] == -inf);
    CHECK(y[1] == -inf);
    CHECK(y[2] == inf);
    CHECK(std::isnan(y[3]));
    CHECK(std::isnan(y[4]));
    CHECK(std::isnan(y[5]));
    CHECK(same(y[6], T(0)));
    CHECK(std::isnan(y[7]));
}

TEST_CASE_TEMPLATE("simd math: log1p", T, float, double) {
    auto f = [](auto v) { return log1p(v); };
    auto r = [](long double x) { return std::log1p(x); };
    check_accuracy<T>("log1p", f, r, sweep<T>(T(-1), lim_max<T>), 4);
    check_accuracy<T>("log1p near 0", f, r, sweep<T>(T(-0.5), T(1)), 4);
    check_accuracy<T>("log1p tiny", f, r, sweep<T>(T(-1e-6), T(1e-6)), 4);
    const T inf = std::numeric_limits<T>::infinity();
    const T dn = std::numeric_limits<T>::denorm_min();
    const auto y = apply<T>(f, {T(-1), -T(0), T(0), inf, -inf, std::numeric_limits<T>::quiet_NaN(), T(-2), dn});
    CHECK(y[0] == -inf);
    CHECK(same(y[1], -T(0)));
    CHECK(same(y[2], T(0)));
    CHECK(y[3] == inf);
    CHECK(std::isnan(y[4]));
    CHECK(std::isnan(y[5]));
    CHECK(std::isnan(y[6]));
    CHECK(y[7] == dn);
}

TEST_CASE_TEMPLATE("simd math: tanh", T, float, double) {
    auto f = [](auto v) { return tanh(v); };
    auto r = [](long double x) { return std::tanh(x); };
    check_accuracy<T>("tanh", f, r, sweep<T>(T(-25), T(25)), 4);
    check_accuracy<T>("tanh near 0", f, r, sweep<T>(T(-1), T(1)), 4);
    check_accuracy<T>("tanh all finite", f, r, sweep<T>(-lim_max<T>, lim_max<T>, 0, 20000), 4);
    const T inf = std::numeric_limits<T>::infinity();
    const T dn = std::numeric_limits<T>::denorm_min();
    const auto y = apply<T>(f, {T(0), -T(0), inf, -inf, std::numeric_limits<T>::quiet_NaN(), T(1e4), T(-1e4), dn});
    CHECK(same(y[0], T(0)));
    CHECK(same(y[1], -T(0)));
    CHECK(y[2] == T(1));
    CHECK(y[3] == T(-1));
    CHECK(std::isnan(y[4]));
    CHECK(y[5] == T(1));
    CHECK(y[6] == T(-1));
    CHECK(y[7] == dn);
}

TEST_CASE_TEMPLATE("simd math: erf", T, float, double) {
    auto f = [](auto v) { return erf(v); };
    auto r = [](long double x) { return std::erf(x); };
    check_accuracy<T>("erf", f, r, sweep<T>(T(-7), T(7)), 4);
    check_accuracy<T>("erf near the branch at 1", f, r, sweep<T>(T(0.9), T(1.1)), 4);
    check_accuracy<T>("erf all finite", f, r, sweep<T>(-lim_max<T>, lim_max<T>, 0, 20000), 4);
    const T inf = std::numeric_limits<T>::infinity();
    const auto y = apply<T>(f, {T(0), -T(0), inf, -inf, std::numeric_limits<T>::quiet_NaN(), T(100)});
    CHECK(same(y[0], T(0)));
    CHECK(same(y[1], -T(0)));
    CHECK(y[2] == T(1));
    CHECK(y[3] == T(-1));
    CHECK(std::isnan(y[4]));
    CHECK(y[5] == T(1));
}

TEST_CASE_TEMPLATE("simd math: sigmoid", T, float, double) {
    auto f = [](auto v) { return sigmoid(v); };
    auto r = [](long double x) { return 1.0L / (1.0L + std::exp(-x)); };
    check_accuracy<T>("sigmoid", f, r, sweep<T>(T(-120), T(40)), 4);
    check_accuracy<T>("sigmoid all finite", f, r, sweep<T>(-lim_max<T>, lim_max<T>, 0, 20000), 4);
    const T inf = std::numeric_limits<T>::infinity();
    const auto y = apply<T>(f, {T(0), inf, -inf, std::numeric_limits<T>::quiet_NaN()});
    CHECK(y[0] == T(0.5));
    CHECK(y[1] == T(1));
    CHECK(same(y[2], T(0)));
    CHECK(std::isnan(y[3]));
}

TEST_CASE_TEMPLATE("simd math: pow", T, float, double) {
    using V = simd::Vec<T>;
    // pow(x, y) over a grid of bases and exponents, through apply() on x with y fixed per run.
    auto run = [](T y, const std::vector<T>& xs) {
        auto f = [y](V v) { return pow(v, V(y)); };
        auto r = [y](long double x) { return std::pow(x, static_cast<long double>(y)); };
        std::string label = "pow(x, " + std::to_string(static_cast<double>(y)) + ")";
        check_accuracy<T>(label.c_str(), f, r, xs, 4);
    };
    const std::vector<T> positive = sweep<T>(T(0), T(50), 4000, 4000);
    const std::vector<T> any_sign = sweep<T>(T(-50), T(50), 4000, 4000);
    for (T y : {T(0.5), T(2.5), T(-1.75), T(1e-3), T(13.25)}) run(y, positive);
    for (T y : {T(0), T(1), T(2), T(3), T(-1), T(-2), T(-7), T(4)}) run(y, any_sign);
    // varying exponent, results near the overflow threshold
    {
        const T base = T(3);
        auto f = [base](V v) { return pow(V(base), v); };
        auto r = [base](long double y) { return std::pow(static_cast<long double>(base), y); };
        const T lim = std::is_same_v<T, float> ? T(80) : T(646);
        check_accuracy<T>("pow(3, y)", f, r, sweep<T>(-lim, lim, 4000, 4000), 4);
    }
    // std::pow's special cases, pairwise
    const T inf = std::numeric_limits<T>::infinity();
    const T nan = std::numeric_limits<T>::quiet_NaN();
    const std::vector<T> vals = {T(0), -T(0), T(1), T(-1), T(2), T(-2), T(0.5), T(-0.5), T(3), T(-3),
                                 T(2.5), T(-2.5), inf, -inf, nan, std::numeric_limits<T>::denorm_min()};
    for (T x : vals) {
        for (T y : vals) {
            const T got = lanes(pow(V(x), V(y)))[0];
            const T want = std::pow(x, y);
            CAPTURE(x);
            CAPTURE(y);
            CAPTURE(got);
            CAPTURE(want);
            if (std::isnan(want) || std::isinf(want) || want == T(0)) CHECK(same(got, want));
            else CHECK(ulp_error<T>(got, std::pow(static_cast<long double>(x), static_cast<long double>(y))) <= 4);
        }
    }
}

TEST_CASE_TEMPLATE("simd: scalars convert to packets in mixed expressions", T, float, double) {
    using V = simd::Vec<T>;
    const V x = iota<T>();
    const auto lx = lanes(x);
    const auto m = lanes((x == T(2)) | (T(3) < x));
    const auto y = lanes(select(x > T(1), T(2) * x + T(1), T(-1)));
    const auto p = lanes(pow(x, T(2)));
    const auto q = lanes(pow(T(2), x));
    const auto r = lanes(min(max(x, T(2)), T(3)));
    for (int i = 0; i < V::size; ++i) {
        CHECK(m[i] == (lx[i] == T(2) || lx[i] > T(3)));
        CHECK(y[i] == (lx[i] > T(1) ? T(2) * lx[i] + T(1) : T(-1)));
        CHECK(p[i] == lx[i] * lx[i]);
        CHECK(q[i] == std::ldexp(T(1), static_cast<int>(lx[i])));
        CHECK(r[i] == std::min(std::max(lx[i], T(2)), T(3)));
    }
}

TEST_CASE_TEMPLATE("simd math: rsqrt, sqrt and abs on special values", T, float, double) {
    using V = simd::Vec<T>;
    const T inf = std::numeric_limits<T>::infinity();
    CHECK(lanes(rsqrt(V(T(0))))[0] == inf);
    CHECK(same(lanes(rsqrt(V(inf)))[0], T(0)));
    CHECK(std::isnan(lanes(rsqrt(V(T(-1))))[0]));
    CHECK(lanes(rsqrt(V(T(0.25))))[0] == T(2));
    CHECK(same(lanes(abs(V(-T(0))))[0], T(0)));
    CHECK(lanes(abs(V(-inf)))[0] == inf);
}
