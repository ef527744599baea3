// Tests for kiln/backend/cpu/gemm.hpp: gemm and gemm_batched_strided against a naive
// long-double reference. Builds on doctest and the CPU thread pool.
#include <doctest/doctest.h>

#include <kiln/backend/cpu/gemm.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <stdexcept>
#include <vector>

namespace {

using kiln::index_t;
namespace cpu = kiln::backend::cpu;

// Deterministic values: uniform in [-1, 1), or small integers in [-4, 4] when `integers`.
struct Lcg {
  std::uint64_t s;
  explicit Lcg(std::uint64_t seed) : s(seed * 6364136223846793005ULL + 1442695040888963407ULL) {}
  double next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(s >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
  }
  int next_int() { return static_cast<int>((s = s * 6364136223846793005ULL + 1) >> 61) - 4; }
};

template <class T>
std::vector<T> random_matrix(index_t count, Lcg& rng, bool integers) {
  std::vector<T> v(static_cast<std::size_t>(std::max<index_t>(count, 1)));
  for (auto& x : v) x = integers ? static_cast<T>(rng.next_int()) : static_cast<T>(rng.next());
  return v;
}

// C = alpha·op(A)·op(B) + beta·C in long double; returns also sum |alpha·a·b| per element,
// the scale the rounding error grows with.
template <class T>
void reference_gemm(bool ta, bool tb, index_t M, index_t N, index_t K, T alpha, const T* A,
                    index_t lda, const T* B, index_t ldb, T beta, const T* C, index_t ldc,
                    std::vector<long double>& out, std::vector<long double>& mag) {
  out.assign(static_cast<std::size_t>(M * N), 0.0L);
  mag.assign(static_cast<std::size_t>(M * N), 0.0L);
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      long double s = 0, m = 0;
      for (index_t k = 0; k < K; ++k) {
        const long double a = ta ? A[k * lda + i] : A[i * lda + k];
        const long double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
        m += std::fabs(a * b);
      }
      long double r = static_cast<long double>(alpha) * s;
      if (beta != T(0)) r += static_cast<long double>(beta) * C[i * ldc + j];
      out[static_cast<std::size_t>(i * N + j)] = r;
      mag[static_cast<std::size_t>(i * N + j)] =
          std::fabs(static_cast<long double>(alpha)) * m +
          (beta != T(0) ? std::fabs(static_cast<long double>(beta) * C[i * ldc + j]) : 0.0L);
    }
}

template <class T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon();
}

struct Case {
  bool ta, tb;
  index_t M, N, K;
  index_t pad_a = 0, pad_b = 0, pad_c = 0;
  double alpha = 1, beta = 0;
  bool integers = false;
  bool nan_c = false;  // fill C with NaN (only meaningful with beta == 0)
};

// Runs one case through gemm and checks every element of C (and that padding is untouched).
template <class T>
void call_gemm(bool ta, bool tb, index_t M, index_t N, index_t K, T alpha, const T* A, index_t lda,
               const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  cpu::gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <class T>
using gemm_fn = void (*)(bool, bool, index_t, index_t, index_t, T, const T*, index_t, const T*,
                         index_t, T, T*, index_t);

template <class T>
void check_case(const Case& c, std::uint64_t seed, gemm_fn<T> run = &call_gemm<T>) {
  CAPTURE(c.ta);
  CAPTURE(c.tb);
  CAPTURE(c.M);
  CAPTURE(c.N);
  CAPTURE(c.K);
  CAPTURE(c.alpha);
  CAPTURE(c.beta);
  CAPTURE(c.pad_a);
  CAPTURE(c.pad_c);
  Lcg rng(seed);
  const index_t a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const index_t b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  const index_t lda = a_cols + c.pad_a, ldb = b_cols + c.pad_b, ldc = c.N + c.pad_c;
  auto A = random_matrix<T>(a_rows * lda, rng, c.integers);
  auto B = random_matrix<T>(b_rows * ldb, rng, c.integers);
  auto C = random_matrix<T>(c.M * ldc, rng, c.integers);
  if (c.nan_c) std::fill(C.begin(), C.end(), std::numeric_limits<T>::quiet_NaN());
  const auto C0 = C;
  std::vector<long double> ref, mag;
  reference_gemm<T>(c.ta, c.tb, c.M, c.N, c.K, T(c.alpha), A.data(), lda, B.data(), ldb,
                    T(c.beta), C0.data(), ldc, ref, mag);
  run(c.ta, c.tb, c.M, c.N, c.K, T(c.alpha), A.data(), lda, B.data(), ldb, T(c.beta), C.data(),
      ldc);
  int bad = 0;
  for (index_t i = 0; i < c.M && bad < 5; ++i) {
    for (index_t j = 0; j < ldc && bad < 5; ++j) {
      const T got = C[static_cast<std::size_t>(i * ldc + j)];
      if (j >= c.N) {  // padding columns stay as they were
        const T was = C0[static_cast<std::size_t>(i * ldc + j)];
        if (!(got == was || (std::isnan(got) && std::isnan(was)))) {
          ++bad;
          FAIL_CHECK("padding of C changed at (" << i << ", " << j << ")");
        }
        continue;
      }
      const long double want = ref[static_cast<std::size_t>(i * c.N + j)];
      const long double scale = mag[static_cast<std::size_t>(i * c.N + j)];
      // Error bound ~ (K + 2)·u·sum|terms|, with a safety factor of 2.
      const long double tol =
          c.integers ? 0.0L : 2.0L * (c.K + 2) * unit_roundoff<T>() * scale + 1e-30L;
      const long double err = std::fabs(static_cast<long double>(got) - want);
      if (!(err <= tol)) {
        ++bad;
        FAIL_CHECK("C(" << i << ", " << j << ") = " << got << ", want " << static_cast<double>(want)
                        << " (error " << static_cast<double>(err) << ", tolerance "
                        << static_cast<double>(tol) << ")");
      }
    }
  }
}

template <class T>
void run_size_sweep(bool integers) {
  const index_t sizes[] = {1, 2, 7, 17, 33, 65};
  std::uint64_t seed = 1;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    for (index_t m : sizes)
      for (index_t n : sizes)
        for (index_t k : {index_t(1), index_t(7), index_t(33)}) {
          Case c{ta, tb, m, n, k};
          c.integers = integers;
          check_case<T>(c, seed++);
        }
  }
}

template <class T>
void run_edge_cases() {
  std::uint64_t seed = 100;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    // Larger and mixed shapes crossing the cache blocks (KC = 256, MC, NC), with padding.
    check_case<T>(Case{ta, tb, 257, 65, 257, 3, 5, 7}, seed++);
    check_case<T>(Case{ta, tb, 65, 257, 40, 1, 2, 0}, seed++);
    check_case<T>(Case{ta, tb, 100, 37, 300, 1, 0, 2, 0.5, 0.25}, seed++);
    check_case<T>(Case{ta, tb, 31, 203, 65, 0, 4, 0, -1.5, 1.0}, seed++);
    check_case<T>(Case{ta, tb, 1, 300, 129}, seed++);
    check_case<T>(Case{ta, tb, 300, 1, 129}, seed++);
    check_case<T>(Case{ta, tb, 65, 3100, 20}, seed++);  // N beyond one NC panel
    check_case<T>(Case{ta, tb, 33, 17, 0, 0, 0, 1, 1.0, 0.5}, seed++);  // K = 0: C = beta·C
    // beta == 0 ignores NaN in C.
    Case nan{ta, tb, 50, 41, 19};
    nan.nan_c = true;
    nan.pad_c = 3;
    check_case<T>(nan, seed++);
    Case nan_k0{ta, tb, 9, 11, 0};
    nan_k0.nan_c = true;
    check_case<T>(nan_k0, seed++);
    // alpha == 0 with beta == 2.
    check_case<T>(Case{ta, tb, 20, 30, 40, 0, 0, 0, 0.0, 2.0}, seed++);
    // Exact for small integers on a shape that runs every blocking loop.
    Case exact{ta, tb, 150, 70, 300, 2, 1, 3, 1.0, -1.0};
    exact.integers = true;
    check_case<T>(exact, seed++);
  }
}

void run_with_threads(int threads, void (*fn)()) {
  const int before = cpu::num_threads();
  cpu::set_num_threads(threads);
  fn();
  cpu::set_num_threads(before);
}

}  // namespace

TEST_CASE("gemm float: all transposes, odd sizes, 1 and 2 threads") {
  // The sweep's products are below the threading threshold, so one pass covers them.
  run_size_sweep<float>(false);
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    run_with_threads(threads, [] { run_edge_cases<float>(); });
  }
}

TEST_CASE("gemm double: all transposes, odd sizes, 1 and 2 threads") {
  // The sweep's products are below the threading threshold, so one pass covers them.
  run_size_sweep<double>(false);
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    run_with_threads(threads, [] { run_edge_cases<double>(); });
  }
}

TEST_CASE("gemm is exact on small integers") {
  run_with_threads(2, [] {
    run_size_sweep<float>(true);
    run_size_sweep<double>(true);
  });
}

TEST_CASE("gemm float: larger shapes with 2 threads") {
  run_with_threads(2, [] {
    check_case<float>(Case{false, false, 300, 200, 270}, 7);
    check_case<float>(Case{true, true, 130, 520, 260, 1, 1, 1, 0.75, 0.5}, 8);
  });
}

TEST_CASE("gemm with at most four rows and a transposed B: dot products, threaded by column") {
  // The shapes of generation with a KV cache: a few rows of activations against weights stored
  // out × in. Sizes cross the 8-, 4- and 2-column blocks, the SIMD width's tail of K, strided and
  // transposed A, and the column split between threads.
  const auto sweep = [](auto zero) {
    using T = decltype(zero);
    std::uint64_t seed = 500;
    for (int ta = 0; ta < 2; ++ta)
      for (index_t m = 1; m <= 4; ++m)
        for (index_t n : {index_t(1), index_t(3), index_t(9), index_t(17), index_t(2000)})
          for (index_t k : {index_t(5), index_t(16), index_t(31), index_t(257)}) {
            Case c{ta == 1, true, m, n, k, index_t(ta), 3, 2};
            if (seed % 3 == 0) {
              c.alpha = -0.5;
              c.beta = 1.5;
            }
            check_case<T>(c, seed++);
            Case exact = c;
            exact.integers = true;
            check_case<T>(exact, seed++);
          }
    Case nan{false, true, 3, 700, 100};
    nan.nan_c = true;
    nan.pad_c = 1;
    check_case<T>(nan, seed++);
  };
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    const int before = cpu::num_threads();
    cpu::set_num_threads(threads);
    sweep(0.0f);
    sweep(0.0);
    cpu::set_num_threads(before);
  }
}

TEST_CASE("gemm_batched_strided matches per-item gemm, with broadcast") {
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    const int before = cpu::num_threads();
    cpu::set_num_threads(threads);
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      for (index_t batch : {index_t(1), index_t(3), index_t(8)}) {
        for (int bcast = 0; bcast < 3; ++bcast) {  // 0: none, 1: A shared, 2: B shared
          const index_t M = 19, N = 23, K = 37;
          const index_t lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 2, ldc = N + 3;
          const index_t a_size = (ta ? K : M) * lda, b_size = (tb ? N : K) * ldb;
          const index_t stride_a = bcast == 1 ? 0 : a_size + 5;
          const index_t stride_b = bcast == 2 ? 0 : b_size + 1;
          const index_t stride_c = M * ldc + 4;
          Lcg rng(static_cast<std::uint64_t>(batch * 10 + bcast + t * 100));
          auto A = random_matrix<double>(stride_a * (batch - 1) + a_size, rng, false);
          auto B = random_matrix<double>(stride_b * (batch - 1) + b_size, rng, false);
          auto C = random_matrix<double>(stride_c * batch, rng, false);
          auto expect = C;
          for (index_t i = 0; i < batch; ++i) {
            std::vector<long double> ref, mag;
            reference_gemm<double>(ta, tb, M, N, K, 1.5, A.data() + i * stride_a, lda,
                                   B.data() + i * stride_b, ldb, -0.5,
                                   C.data() + i * stride_c, ldc, ref, mag);
            for (index_t r = 0; r < M; ++r)
              for (index_t j = 0; j < N; ++j)
                expect[static_cast<std::size_t>(i * stride_c + r * ldc + j)] =
                    static_cast<double>(ref[static_cast<std::size_t>(r * N + j)]);
          }
          cpu::gemm_batched_strided<double>(ta, tb, M, N, K, 1.5, A.data(), lda, stride_a,
                                            B.data(), ldb, stride_b, -0.5, C.data(), ldc,
                                            stride_c, batch);
          for (std::size_t e = 0; e < C.size(); ++e) REQUIRE(C[e] == doctest::Approx(expect[e]).epsilon(1e-12));
        }
      }
    }
    cpu::set_num_threads(before);
  }
}

TEST_CASE("gemm_batched_strided float, larger items split over threads") {
  run_with_threads(2, [] {
    const index_t M = 70, N = 90, K = 130, batch = 3;
    Lcg rng(5);
    auto A = random_matrix<float>(M * K * batch, rng, true);
    auto B = random_matrix<float>(K * N, rng, true);  // shared
    std::vector<float> C(static_cast<std::size_t>(M * N * batch),
                         std::numeric_limits<float>::quiet_NaN());
    cpu::gemm_batched_strided<float>(false, false, M, N, K, 1.0f, A.data(), K, M * K, B.data(),
                                     N, 0, 0.0f, C.data(), N, M * N, batch);
    std::vector<float> one(static_cast<std::size_t>(M * N));
    for (index_t i = 0; i < batch; ++i) {
      cpu::gemm<float>(false, false, M, N, K, 1.0f, A.data() + i * M * K, K, B.data(), N, 0.0f,
                       one.data(), N);
      for (index_t e = 0; e < M * N; ++e)
        REQUIRE(C[static_cast<std::size_t>(i * M * N + e)] == one[static_cast<std::size_t>(e)]);
    }
  });
}

TEST_CASE("gemm rejects bad arguments with a message naming them") {
  std::vector<float> a(64), b(64), c(64);
  auto call = [&](bool ta, bool tb, index_t M, index_t N, index_t K, index_t lda, index_t ldb,
                  index_t ldc) {
    cpu::gemm<float>(ta, tb, M, N, K, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), ldc);
  };
  CHECK_THROWS_AS(call(false, false, -1, 2, 2, 2, 2, 2), std::invalid_argument);
  CHECK_THROWS_AS(call(false, false, 2, -1, 2, 2, 2, 2), std::invalid_argument);
  CHECK_THROWS_AS(call(false, false, 2, 2, -3, 2, 2, 2), std::invalid_argument);
  CHECK_THROWS_WITH_AS(call(false, false, 2, 3, 4, 3, 3, 3), doctest::Contains("lda"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(call(true, false, 5, 3, 4, 4, 3, 3), doctest::Contains("lda"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(call(false, false, 2, 3, 4, 4, 2, 3), doctest::Contains("ldb"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(call(false, true, 2, 3, 4, 4, 3, 3), doctest::Contains("ldb"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(call(false, false, 2, 3, 4, 4, 3, 2), doctest::Contains("ldc"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(call(false, false, -1, 2, 2, 2, 2, 2), doctest::Contains("M"),
                       std::invalid_argument);
  CHECK_NOTHROW(call(true, true, 2, 3, 4, 2, 4, 3));
  auto batched = [&](index_t sa, index_t sb, index_t sc, index_t batch) {
    cpu::gemm_batched_strided<float>(false, false, 2, 2, 2, 1.0f, a.data(), 2, sa, b.data(), 2,
                                     sb, 0.0f, c.data(), 2, sc, batch);
  };
  CHECK_THROWS_WITH_AS(batched(4, 4, 4, -1), doctest::Contains("batch"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(batched(-4, 4, 4, 2), doctest::Contains("stride_a"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(batched(4, -4, 4, 2), doctest::Contains("stride_b"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(batched(4, 4, 1, 2), doctest::Contains("stride_c"),
                       std::invalid_argument);
  CHECK_NOTHROW(batched(0, 0, 4, 3));
}

// Runs the blocked driver of one specific kernel (bypassing the run-time choice), on 2 threads
// when the pool has them.
template <class Kern>
void run_kernel(bool ta, bool tb, index_t M, index_t N, index_t K, typename Kern::value_type alpha,
                const typename Kern::value_type* A, index_t lda,
                const typename Kern::value_type* B, index_t ldb,
                typename Kern::value_type beta, typename Kern::value_type* C, index_t ldc) {
  namespace d = cpu::gemm_detail;
  const d::Operands op{ta ? 1 : lda, ta ? lda : 1, tb ? 1 : ldb, tb ? ldb : 1};
  d::gemm_threaded<Kern>(M, N, K, alpha, A, B, op, beta, C, ldc, cpu::num_threads());
}

template <class Kern>
void check_kernel() {
  using T = typename Kern::value_type;
  std::uint64_t seed = 500;
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    const int before = cpu::num_threads();
    cpu::set_num_threads(threads);
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      check_case<T>(Case{ta, tb, 1, 1, 1}, seed++, &run_kernel<Kern>);
      check_case<T>(Case{ta, tb, 37, 45, 29, 1, 2, 3, 0.5, 0.0}, seed++, &run_kernel<Kern>);
      check_case<T>(Case{ta, tb, 151, 70, 270, 0, 0, 1, 1.0, -0.5}, seed++, &run_kernel<Kern>);
    }
    cpu::set_num_threads(before);
  }
}

TEST_CASE("every kernel this CPU can run agrees with the reference") {
  namespace d = cpu::gemm_detail;
  check_kernel<d::PortableF32>();
  check_kernel<d::PortableF64>();
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    check_kernel<d::Avx2F32>();
    check_kernel<d::Avx2F64>();
  }
  if (__builtin_cpu_supports("avx512f")) {
    check_kernel<d::Avx512F32>();
    check_kernel<d::Avx512F64>();
  }
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
  check_kernel<d::NeonF32>();
  check_kernel<d::NeonF64>();
#endif
}

TEST_CASE("gemm picks a vector kernel when the CPU has one, whatever the build flags") {
  const std::string f32 = cpu::gemm_kernel_name<float>();
  const std::string f64 = cpu::gemm_kernel_name<double>();
  MESSAGE("float kernel: " << f32 << ", double kernel: " << f64);
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) {
    CHECK(f32.find("avx512f") == 0);
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    CHECK(f32.find("avx2") == 0);
    CHECK(f64.find("avx2") == 0);
  }
#endif
}
