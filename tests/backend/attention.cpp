// Tests for kiln/backend/cpu/attention.hpp: the blockwise forward against a materialized
// softmax(Q K^T * scale + mask) V in double, the backward against central finite differences
// and a materialized backward, the causal mask's alignment, thread-count independence, errors.
#include <kiln/backend/cpu/attention.hpp>
#include <kiln/backend/cpu/thread_pool.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace {

using kiln::index_t;
namespace cpu = kiln::backend::cpu;

struct Lcg {
  std::uint64_t s;
  explicit Lcg(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ULL + 1) {}
  double uniform(double lo, double hi) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * static_cast<double>(s >> 11) * (1.0 / 9007199254740992.0);
  }
};

std::vector<double> random_vector(index_t n, Lcg& rng, double lo = -1.0, double hi = 1.0) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = rng.uniform(lo, hi);
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class A, class B>
double max_error(const std::vector<A>& a, const std::vector<B>& b) {
  REQUIRE(a.size() == b.size());
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])) /
                        (1.0 + std::fabs(static_cast<double>(b[i]))));
  return e;
}

std::vector<double> numeric_gradient(std::vector<double>& p, const std::function<double()>& loss,
                                     double h = 1e-5) {
  std::vector<double> g(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double saved = p[i];
    p[i] = saved + h;
    const double up = loss();
    p[i] = saved - h;
    const double down = loss();
    p[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

template <class T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Shape {
  index_t B, H, Tq, Tk, D;
  index_t q_size() const { return B * H * Tq * D; }
  index_t kv_size() const { return B * H * Tk * D; }
  index_t rows() const { return B * H * Tq; }
};

// The attention of each head with the Tq x Tk probabilities written out: P = softmax(S),
// S = scale * Q K^T with -inf where j > i under the causal mask; out = P V, lse = logsumexp S.
// With gout given, also the backward of the materialized graph:
// dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = scale dS K, dK = scale dS^T Q.
struct Reference {
  std::vector<double> out, lse, gq, gk, gv;
};

Reference reference_attention(const Shape& s, const std::vector<double>& q,
                              const std::vector<double>& k, const std::vector<double>& v,
                              double scale, bool causal,
                              const std::vector<double>* gout = nullptr) {
  Reference r;
  r.out.assign(static_cast<std::size_t>(s.q_size()), 0);
  r.lse.assign(static_cast<std::size_t>(s.rows()), 0);
  if (gout) {
    r.gq.assign(static_cast<std::size_t>(s.q_size()), 0);
    r.gk.assign(static_cast<std::size_t>(s.kv_size()), 0);
    r.gv.assign(static_cast<std::size_t>(s.kv_size()), 0);
  }
  const index_t D = s.D;
  std::vector<double> P(static_cast<std::size_t>(s.Tq * s.Tk)), dS(P.size());
  for (index_t bh = 0; bh < s.B * s.H; ++bh) {
    const double* Q = q.data() + bh * s.Tq * D;
    const double* K = k.data() + bh * s.Tk * D;
    const double* V = v.data() + bh * s.Tk * D;
    for (index_t i = 0; i < s.Tq; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (index_t j = 0; j < s.Tk; ++j) {
        double sij = -std::numeric_limits<double>::infinity();
        if (!causal || j <= i) {
          sij = 0;
          for (index_t d = 0; d < D; ++d) sij += Q[i * D + d] * K[j * D + d];
          sij *= scale;
        }
        P[i * s.Tk + j] = sij;
        m = std::max(m, sij);
      }
      double sum = 0;
      for (index_t j = 0; j < s.Tk; ++j) sum += std::exp(P[i * s.Tk + j] - m);
      r.lse[bh * s.Tq + i] = m + std::log(sum);
      for (index_t j = 0; j < s.Tk; ++j) P[i * s.Tk + j] = std::exp(P[i * s.Tk + j] - m) / sum;
      for (index_t d = 0; d < D; ++d) {
        double o = 0;
        for (index_t j = 0; j < s.Tk; ++j) o += P[i * s.Tk + j] * V[j * D + d];
        r.out[(bh * s.Tq + i) * D + d] = o;
      }
    }
    if (!gout) continue;
    const double* dO = gout->data() + bh * s.Tq * D;
    for (index_t i = 0; i < s.Tq; ++i) {
      double rowsum = 0;
      for (index_t j = 0; j < s.Tk; ++j) {
        double dp = 0;
        for (index_t d = 0; d < D; ++d) dp += dO[i * D + d] * V[j * D + d];
        dS[i * s.Tk + j] = dp;
        rowsum += P[i * s.Tk + j] * dp;
      }
      for (index_t j = 0; j < s.Tk; ++j)
        dS[i * s.Tk + j] = P[i * s.Tk + j] * (dS[i * s.Tk + j] - rowsum);
    }
    for (index_t j = 0; j < s.Tk; ++j)
      for (index_t d = 0; d < D; ++d) {
        double gv = 0, gk = 0;
        for (index_t i = 0; i < s.Tq; ++i) {
          gv += P[i * s.Tk + j] * dO[i * D + d];
          gk += dS[i * s.Tk + j] * Q[i * D + d];
        }
        r.gv[(bh * s.Tk + j) * D + d] = gv;
        r.gk[(bh * s.Tk + j) * D + d] = scale * gk;
      }
    for (index_t i = 0; i < s.Tq; ++i)
      for (index_t d = 0; d < D; ++d) {
        double gq = 0;
        for (index_t j = 0; j < s.Tk; ++j) gq += dS[i * s.Tk + j] * K[j * D + d];
        r.gq[(bh * s.Tq + i) * D + d] = scale * gq;
      }
  }
  return r;
}

// Odd sizes, Tq != Tk both ways, T not a multiple of the 64-row block, single rows, B*H below
// and above the backward's 16-task split.
const Shape shapes[] = {{1, 1, 1, 1, 1},      {1, 1, 1, 5, 3},     {2, 3, 7, 7, 5},
                        {1, 2, 65, 65, 8},    {1, 1, 130, 70, 16}, {1, 1, 40, 150, 16},
                        {2, 1, 128, 128, 64}, {4, 5, 3, 9, 4},     {1, 1, 200, 200, 7}};

}  // namespace

TEST_CASE("attention_default_scale is 1/sqrt(head_dim)") {
  CHECK(cpu::attention_default_scale<float>(64) == 0.125f);
  CHECK(cpu::attention_default_scale<double>(2) == doctest::Approx(1 / std::sqrt(2.0)));
}

TEST_CASE_TEMPLATE("attention_forward matches the materialized softmax(QK^T * scale + mask) V", T,
                   float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  Lcg rng(1);
  for (const Shape& s : shapes) {
    // Wide logits (|q.k| * scale up to ~ 4 D / sqrt(D)) exercise the running-max rescaling.
    const auto q = random_vector(s.q_size(), rng, -2, 2),
               k = random_vector(s.kv_size(), rng, -2, 2);
    const auto v = random_vector(s.kv_size(), rng);
    const double scale = cpu::attention_default_scale<double>(s.D);
    for (const bool causal : {false, true}) {
      CAPTURE(s.B);
      CAPTURE(s.H);
      CAPTURE(s.Tq);
      CAPTURE(s.Tk);
      CAPTURE(s.D);
      CAPTURE(causal);
      const Reference ref = reference_attention(s, q, k, v, scale, causal);
      const auto qt = cast<T>(q), kt = cast<T>(k), vt = cast<T>(v);
      std::vector<T> out(static_cast<std::size_t>(s.q_size()), T(99)),
          lse(static_cast<std::size_t>(s.rows()));
      cpu::attention_forward(qt.data(), kt.data(), vt.data(), s.B, s.H, s.Tq, s.Tk, s.D, T(scale),
                             causal, out.data(), lse.data());
      CHECK(max_error(out, ref.out) < tol);
      CHECK(max_error(lse, ref.lse) < tol);
    }
  }
}

TEST_CASE(
    "attention: the causal mask is aligned at the top left (key j visible to query i iff j <= i)") {
  // Tq = 2, Tk = 3, D = 1, q = 0: every visible score is 0, so each query averages the values
  // it sees. Top-left: query 0 sees v0, query 1 sees v0 and v1 (bottom-right would give
  // query 0 keys 0..1 and query 1 keys 0..2).
  const std::vector<double> q = {0, 0}, k = {1, 2, 3}, v = {10, 20, 40};
  std::vector<double> out(2), lse(2);
  cpu::attention_forward(q.data(), k.data(), v.data(), 1, 1, 2, 3, 1, 1.0, true, out.data(),
                         lse.data());
  CHECK(out[0] == doctest::Approx(10));
  CHECK(out[1] == doctest::Approx(15));
  CHECK(lse[0] == doctest::Approx(0));
  CHECK(lse[1] == doctest::Approx(std::log(2.0)));
  cpu::attention_forward(q.data(), k.data(), v.data(), 1, 1, 2, 3, 1, 1.0, false, out.data(),
                         lse.data());
  CHECK(out[0] == doctest::Approx(70.0 / 3));
  CHECK(lse[1] == doctest::Approx(std::log(3.0)));
}

TEST_CASE("attention_backward matches finite differences") {
  // Small heads; (1, 2, 70, 67, 3) has two key blocks per head and two slices (B*H = 2 < 16),
  // (4, 4, 9, 11, 2) one slice (B*H = 16).
  const Shape fd_shapes[] = {
      {1, 1, 1, 1, 1}, {1, 1, 3, 5, 2}, {2, 1, 6, 4, 3}, {1, 2, 70, 67, 3}, {4, 4, 9, 11, 2}};
  Lcg rng(2);
  for (const Shape& s : fd_shapes) {
    auto q = random_vector(s.q_size(), rng, -2, 2), k = random_vector(s.kv_size(), rng, -2, 2);
    auto v = random_vector(s.kv_size(), rng);
    const auto r = random_vector(s.q_size(), rng);  // loss = sum(out * r), so gout = r
    const double scale = 0.7;
    for (const bool causal : {false, true}) {
      CAPTURE(s.B);
      CAPTURE(s.H);
      CAPTURE(s.Tq);
      CAPTURE(s.Tk);
      CAPTURE(s.D);
      CAPTURE(causal);
      const auto loss = [&] {
        std::vector<double> out(static_cast<std::size_t>(s.q_size()));
        cpu::attention_forward(q.data(), k.data(), v.data(), s.B, s.H, s.Tq, s.Tk, s.D, scale,
                               causal, out.data(), static_cast<double*>(nullptr));
        return dot(out, r);
      };
      std::vector<double> out(static_cast<std::size_t>(s.q_size())),
          lse(static_cast<std::size_t>(s.rows()));
      cpu::attention_forward(q.data(), k.data(), v.data(), s.B, s.H, s.Tq, s.Tk, s.D, scale, causal,
                             out.data(), lse.data());
      std::vector<double> gq(q.size(), 5.0), gk(k.size(), 5.0), gv(v.size(), 5.0);
      cpu::attention_backward(q.data(), k.data(), v.data(), out.data(), r.data(), lse.data(), s.B,
                              s.H, s.Tq, s.Tk, s.D, scale, causal, gq.data(), gk.data(), gv.data());
      CHECK(max_error(gq, numeric_gradient(q, loss)) < 1e-8);
      CHECK(max_error(gk, numeric_gradient(k, loss)) < 1e-8);
      CHECK(max_error(gv, numeric_gradient(v, loss)) < 1e-8);
    }
  }
}

TEST_CASE_TEMPLATE("attention_backward matches the materialized backward", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  Lcg rng(3);
  for (const Shape& s : shapes) {
    const auto q = random_vector(s.q_size(), rng, -2, 2),
               k = random_vector(s.kv_size(), rng, -2, 2);
    const auto v = random_vector(s.kv_size(), rng), gout = random_vector(s.q_size(), rng);
    const double scale = cpu::attention_default_scale<double>(s.D);
    for (const bool causal : {false, true}) {
      CAPTURE(s.B);
      CAPTURE(s.H);
      CAPTURE(s.Tq);
      CAPTURE(s.Tk);
      CAPTURE(s.D);
      CAPTURE(causal);
      const Reference ref = reference_attention(s, q, k, v, scale, causal, &gout);
      const auto qt = cast<T>(q), kt = cast<T>(k), vt = cast<T>(v), got = cast<T>(gout);
      std::vector<T> out(static_cast<std::size_t>(s.q_size())),
          lse(static_cast<std::size_t>(s.rows()));
      cpu::attention_forward(qt.data(), kt.data(), vt.data(), s.B, s.H, s.Tq, s.Tk, s.D, T(scale),
                             causal, out.data(), lse.data());
      std::vector<T> gq(q.size()), gk(k.size()), gv(v.size());
      cpu::attention_backward(qt.data(), kt.data(), vt.data(), out.data(), got.data(), lse.data(),
                              s.B, s.H, s.Tq, s.Tk, s.D, T(scale), causal, gq.data(), gk.data(),
                              gv.data());
      CHECK(max_error(gq, ref.gq) < tol);
      CHECK(max_error(gk, ref.gk) < tol);
      CHECK(max_error(gv, ref.gv) < tol);
    }
  }
}

TEST_CASE("attention results do not depend on the number of threads") {
  Lcg rng(4);
  // (1, 4, 130, 130, 32): 12 forward tasks, 3 key-block slices per head in the backward;
  // (4, 8, 70, 70, 16): 32 heads, one slice each.
  const Shape det_shapes[] = {{1, 4, 130, 130, 32}, {4, 8, 70, 70, 16}};
  for (const Shape& s : det_shapes) {
    const auto q = cast<float>(random_vector(s.q_size(), rng, -2, 2));
    const auto k = cast<float>(random_vector(s.kv_size(), rng, -2, 2));
    const auto v = cast<float>(random_vector(s.kv_size(), rng)),
               gout = cast<float>(random_vector(s.q_size(), rng));
    for (const bool causal : {false, true}) {
      const auto run = [&](int threads) {
        cpu::set_num_threads(threads);
        std::vector<float> out(q.size()), lse(static_cast<std::size_t>(s.rows())), gq(q.size()),
            gk(k.size()), gv(v.size());
        cpu::attention_forward(q.data(), k.data(), v.data(), s.B, s.H, s.Tq, s.Tk, s.D, 0.2f,
                               causal, out.data(), lse.data());
        cpu::attention_backward(q.data(), k.data(), v.data(), out.data(), gout.data(), lse.data(),
                                s.B, s.H, s.Tq, s.Tk, s.D, 0.2f, causal, gq.data(), gk.data(),
                                gv.data());
        return std::vector<std::vector<float>>{out, lse, gq, gk, gv};
      };
      const auto one = run(1), two = run(2), three = run(3);
      cpu::set_num_threads(2);
      for (std::size_t i = 0; i < one.size(); ++i) {
        CAPTURE(i);
        CAPTURE(causal);
        CHECK(bit_equal(one[i], two[i]));
        CHECK(bit_equal(one[i], three[i]));
      }
    }
  }
}

TEST_CASE("attention rejects bad sizes with a message") {
  std::vector<float> buf(16);
  float* p = buf.data();
  CHECK_THROWS_WITH_AS(cpu::attention_forward(p, p, p, 1, 1, 2, 0, 4, 0.5f, false, p, p),
                       doctest::Contains("at least one key"), kiln::ValueError);
  CHECK_THROWS_WITH_AS(
      cpu::attention_backward(p, p, p, p, p, p, 1, -1, 2, 2, 4, 0.5f, false, p, p, p),
      doctest::Contains("non-negative"), kiln::ValueError);
}
