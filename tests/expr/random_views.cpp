// Seeded randomized property tests of views (core/tensor.hpp), lazy elementwise expressions with
// broadcasting (expr/), assign with aliasing, reductions (expr/reduce.hpp) and matmul
// (ops/matmul.hpp), all against a naive reference written here: a view is modelled as the list
// of base-element indices of its elements in row-major order, and values are computed in double.
#include <doctest/doctest.h>
#include <kiln/kiln.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

using kiln::index_t;
using kiln::Shape;
using kiln::Tensor;

namespace {

using Dims = std::vector<index_t>;
using Gen = std::mt19937;

// --- small helpers -------------------------------------------------------------------------

index_t count(const Dims& d) {
  index_t n = 1;
  for (index_t x : d) n *= x;
  return n;
}
Shape to_shape(const Dims& d) { return Shape::from(d.data(), static_cast<int>(d.size())); }
Dims to_dims(const Shape& s) { return Dims(s.begin(), s.end()); }
std::string str(const Dims& d) {
  std::string s = "[";
  for (std::size_t i = 0; i < d.size(); ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}
int rint(Gen& g, int lo, int hi) { return lo + static_cast<int>(g() % static_cast<unsigned>(hi - lo + 1)); }
bool chance(Gen& g, int percent) { return static_cast<int>(g() % 100) < percent; }
// Values k/1000 in [-4, 4]: repeats happen (ties for argmax, equal operands for comparisons).
double rval(Gen& g) { return (static_cast<int>(g() % 8001) - 4000) / 1000.0; }
// Percentage of leaf elements that are NaN, +inf or -inf (0 except in the special-value tests).
int special_percent = 0;
double rval_special(Gen& g) {
  if (special_percent > 0 && chance(g, special_percent)) {
    switch (rint(g, 0, 2)) {
      case 0: return std::numeric_limits<double>::quiet_NaN();
      case 1: return std::numeric_limits<double>::infinity();
      default: return -std::numeric_limits<double>::infinity();
    }
  }
  return rval(g);
}

// Calls f(coords, flat) for every multi-index of `shape` in row-major order.
template <class F>
void for_each_index(const Dims& shape, F&& f) {
  const index_t n = count(shape);
  Dims c(shape.size(), 0);
  for (index_t i = 0; i < n; ++i) {
    f(static_cast<const Dims&>(c), i);
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (++c[d] < shape[d]) break;
      c[d] = 0;
    }
  }
}
index_t flat_index(const Dims& shape, const Dims& c) {
  index_t f = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) f = f * shape[d] + c[d];
  return f;
}

// --- the reference model of a view -----------------------------------------------------------

// The elements of a view, row-major, as indices into a shared base array of doubles.
struct Ref {
  Dims shape;
  std::vector<index_t> idx;
  std::shared_ptr<std::vector<double>> base;
  double operator[](index_t i) const { return (*base)[static_cast<std::size_t>(idx[static_cast<std::size_t>(i)])]; }
  index_t numel() const { return count(shape); }
};

// A view whose element at new coords c is the old element at old_coords(c).
template <class F>
Ref ref_map(const Ref& r, const Dims& shape, F&& old_coords) {
  Ref out{shape, {}, r.base};
  out.idx.resize(static_cast<std::size_t>(count(shape)));
  for_each_index(shape, [&](const Dims& c, index_t i) {
    out.idx[static_cast<std::size_t>(i)] = r.idx[static_cast<std::size_t>(flat_index(r.shape, old_coords(c)))];
  });
  return out;
}
Ref ref_permute(const Ref& r, const std::vector<int>& p) {
  Dims s(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) s[i] = r.shape[static_cast<std::size_t>(p[i])];
  return ref_map(r, s, [&](const Dims& c) {
    Dims o(c.size());
    for (std::size_t i = 0; i < p.size(); ++i) o[static_cast<std::size_t>(p[i])] = c[i];
    return o;
  });
}
// Python slice semantics, written independently: negative positions count from the end, both
// ends are clamped into [0, n].
Ref ref_slice(const Ref& r, int d, index_t start, index_t end, index_t step) {
  const index_t n = r.shape[static_cast<std::size_t>(d)];
  auto norm = [n](index_t i) { return std::clamp<index_t>(i < 0 ? i + n : i, 0, n); };
  std::vector<index_t> pos;
  for (index_t i = norm(start); i < norm(end); i += step) pos.push_back(i);
  Dims s = r.shape;
  s[static_cast<std::size_t>(d)] = static_cast<index_t>(pos.size());
  return ref_map(r, s, [&](const Dims& c) {
    Dims o = c;
    o[static_cast<std::size_t>(d)] = pos[static_cast<std::size_t>(c[static_cast<std::size_t>(d)])];
    return o;
  });
}
Ref ref_select(const Ref& r, int d, index_t i) {
  Dims s = r.shape;
  s.erase(s.begin() + d);
  return ref_map(r, s, [&](const Dims& c) {
    Dims o = c;
    o.insert(o.begin() + d, i);
    return o;
  });
}
Ref ref_unsqueeze(const Ref& r, int d) {
  Ref out = r;
  out.shape.insert(out.shape.begin() + d, 1);
  return out;
}
Ref ref_squeeze(const Ref& r, int d) {
  Ref out = r;
  out.shape.erase(out.shape.begin() + d);
  return out;
}
Ref ref_expand(const Ref& r, const Dims& to) {
  const std::size_t lead = to.size() - r.shape.size();
  return ref_map(r, to, [&](const Dims& c) {
    Dims o(r.shape.size());
    for (std::size_t j = 0; j < o.size(); ++j) o[j] = r.shape[j] == 1 ? 0 : c[j + lead];
    return o;
  });
}
Ref ref_reshape(const Ref& r, const Dims& to) { return Ref{to, r.idx, r.base}; }
Ref ref_copy(const Ref& r) {  // an independent copy (clone)
  Ref out{r.shape, {}, std::make_shared<std::vector<double>>()};
  for (index_t i = 0; i < r.numel(); ++i) {
    out.base->push_back(r[i]);
    out.idx.push_back(i);
  }
  return out;
}

// NumPy broadcasting, written independently; false when incompatible.
bool ref_broadcast(const Dims& a, const Dims& b, Dims& out) {
  const std::size_t n = std::max(a.size(), b.size());
  out.assign(n, 1);
  for (std::size_t i = 0; i < n; ++i) {
    const index_t x = i + a.size() >= n ? a[i + a.size() - n] : 1;
    const index_t y = i + b.size() >= n ? b[i + b.size() - n] : 1;
    if (x == y || y == 1)
      out[i] = x;
    else if (x == 1)
      out[i] = y;
    else
      return false;
  }
  return true;
}
// The value of r at output coords c of a broadcast shape `out`.
double ref_at_broadcast(const Ref& r, const Dims& out, const Dims& c) {
  const std::size_t lead = out.size() - r.shape.size();
  index_t f = 0;
  for (std::size_t j = 0; j < r.shape.size(); ++j) f = f * r.shape[j] + (r.shape[j] == 1 ? 0 : c[j + lead]);
  return r[f];
}

// True (and the strides) when the elements of r sit at base offset + sum(c_d * s_d): whether
// any strided view could show them.
bool ref_strided(const Ref& r, Dims& strides) {
  strides.assign(r.shape.size(), 0);
  if (r.numel() == 0) return true;
  const index_t o = r.idx[0];
  for (std::size_t d = 0; d < r.shape.size(); ++d) {
    if (r.shape[d] < 2) continue;
    Dims c(r.shape.size(), 0);
    c[d] = 1;
    strides[d] = r.idx[static_cast<std::size_t>(flat_index(r.shape, c))] - o;
  }
  bool ok = true;
  for_each_index(r.shape, [&](const Dims& c, index_t i) {
    index_t off = o;
    for (std::size_t d = 0; d < c.size(); ++d) off += c[d] * strides[d];
    if (off != r.idx[static_cast<std::size_t>(i)]) ok = false;
  });
  return ok;
}

// --- kiln side ---------------------------------------------------------------------------

template <class T>
Tensor<T> kpermute(const Tensor<T>& t, const std::vector<int>& p) {
  switch (p.size()) {
    case 0: return t.permute({});
    case 1: return t.permute({p[0]});
    case 2: return t.permute({p[0], p[1]});
    case 3: return t.permute({p[0], p[1], p[2]});
    case 4: return t.permute({p[0], p[1], p[2], p[3]});
    case 5: return t.permute({p[0], p[1], p[2], p[3], p[4]});
    case 6: return t.permute({p[0], p[1], p[2], p[3], p[4], p[5]});
    case 7: return t.permute({p[0], p[1], p[2], p[3], p[4], p[5], p[6]});
    default: return t.permute({p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]});
  }
}

// A kiln tensor with its reference; `shares` when t is a view of the reference's base storage
// (so its strides/offset must address exactly the reference's indices).
template <class T>
struct Operand {
  Tensor<T> t;
  Ref r;
  bool shares = true;
  std::string how;
};

template <class T>
Operand<T> make_leaf(Gen& g, const Dims& shape) {
  auto base = std::make_shared<std::vector<double>>();
  std::vector<T> v;
  for (index_t i = 0; i < count(shape); ++i) {
    v.push_back(static_cast<T>(rval_special(g)));
    base->push_back(static_cast<double>(v.back()));
  }
  Ref r{shape, {}, base};
  for (index_t i = 0; i < count(shape); ++i) r.idx.push_back(i);
  return Operand<T>{kiln::from_vector(v, to_shape(shape)), r, true, "leaf" + str(shape)};
}

std::vector<int> random_perm(Gen& g, int n) {
  std::vector<int> p(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = i;
  for (int i = n - 1; i > 0; --i)  // Fisher-Yates by hand: std::shuffle differs between libraries
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(rint(g, 0, i))]);
  return p;
}
std::string str(const std::vector<int>& p) {
  std::string s = "{";
  for (std::size_t i = 0; i < p.size(); ++i) s += (i ? "," : "") + std::to_string(p[i]);
  return s + "}";
}

// An operand of exactly `shape`, built as a random chain of up to `depth` view ops (chosen
// backwards from the wanted shape), with the same chain applied to the reference.
template <class T>
Operand<T> make_operand(Gen& g, const Dims& W, int depth) {
  const int nd = static_cast<int>(W.size());
  if (depth <= 0 || chance(g, 15)) return make_leaf<T>(g, W);
  switch (rint(g, 0, 9)) {
    case 0: {  // permute
      if (nd < 2) break;
      auto p = random_perm(g, nd);
      Dims B(W.size());
      for (int i = 0; i < nd; ++i) B[static_cast<std::size_t>(p[static_cast<std::size_t>(i)])] = W[static_cast<std::size_t>(i)];
      auto b = make_operand<T>(g, B, depth - 1);
      return {kpermute(b.t, p), ref_permute(b.r, p), b.shares, b.how + ".permute" + str(p)};
    }
    case 1: {  // transpose (sometimes with negative axes)
      if (nd < 2) break;
      const int d0 = rint(g, 0, nd - 1), d1 = rint(g, 0, nd - 1);
      Dims B = W;
      std::swap(B[static_cast<std::size_t>(d0)], B[static_cast<std::size_t>(d1)]);
      auto b = make_operand<T>(g, B, depth - 1);
      const int a0 = chance(g, 50) ? d0 - nd : d0, a1 = chance(g, 50) ? d1 - nd : d1;
      std::vector<int> p(static_cast<std::size_t>(nd));
      for (int i = 0; i < nd; ++i) p[static_cast<std::size_t>(i)] = i;
      std::swap(p[static_cast<std::size_t>(d0)], p[static_cast<std::size_t>(d1)]);
      return {b.t.transpose(a0, a1), ref_permute(b.r, p), b.shares,
              b.how + ".transpose(" + std::to_string(a0) + "," + std::to_string(a1) + ")"};
    }
    case 2:
    case 3: {  // slice with a step
      if (nd < 1) break;
      const int d = rint(g, 0, nd - 1);
      const index_t L = W[static_cast<std::size_t>(d)];
      const index_t step = rint(g, 1, 3);
      index_t start = rint(g, 0, 3), end;
      if (L > 0)
        end = start + (L - 1) * step + 1 + rint(g, 0, static_cast<int>(step) - 1);
      else
        end = start - rint(g, 0, 2);
      const index_t n = std::max<index_t>(std::max(start, end), 0) + rint(g, 0, 2);
      Dims B = W;
      B[static_cast<std::size_t>(d)] = n;
      auto b = make_operand<T>(g, B, depth - 1);
      // Spell the bounds in several equivalent ways.
      if (chance(g, 30)) start -= n;
      if (end == n && chance(g, 50)) end += rint(g, 1, 100);
      else if (end < n && end > 0 && chance(g, 30)) end -= n;
      const int ax = chance(g, 30) ? d - nd : d;
      return {b.t.slice(ax, start, end, step), ref_slice(b.r, d, start, end, step), b.shares,
              b.how + ".slice(" + std::to_string(ax) + "," + std::to_string(start) + "," + std::to_string(end) + "," +
                  std::to_string(step) + ")"};
    }
    case 4: {  // select
      if (nd >= 7) break;
      const int d = rint(g, 0, nd);
      const index_t k = rint(g, 1, 4);
      Dims B = W;
      B.insert(B.begin() + d, k);
      auto b = make_operand<T>(g, B, depth - 1);
      index_t i = rint(g, 0, static_cast<int>(k) - 1);
      const index_t spelled = chance(g, 30) ? i - k : i;
      return {b.t.select(d, spelled), ref_select(b.r, d, i), b.shares,
              b.how + ".select(" + std::to_string(d) + "," + std::to_string(spelled) + ")"};
    }
    case 5: {  // unsqueeze at a size-1 dim of W, or squeeze a size-1 dim inserted into the base
      std::vector<int> ones;
      for (int i = 0; i < nd; ++i)
        if (W[static_cast<std::size_t>(i)] == 1) ones.push_back(i);
      if (!ones.empty() && chance(g, 60)) {
        const int d = ones[static_cast<std::size_t>(rint(g, 0, static_cast<int>(ones.size()) - 1))];
        Dims B = W;
        B.erase(B.begin() + d);
        auto b = make_operand<T>(g, B, depth - 1);
        const int ax = chance(g, 30) ? d - nd : d;
        return {b.t.unsqueeze(ax), ref_unsqueeze(b.r, d), b.shares, b.how + ".unsqueeze(" + std::to_string(ax) + ")"};
      }
      if (nd >= 7) break;
      const int d = rint(g, 0, nd);
      Dims B = W;
      B.insert(B.begin() + d, 1);
      auto b = make_operand<T>(g, B, depth - 1);
      if (ones.empty() && chance(g, 50))
        return {b.t.squeeze(), ref_squeeze(b.r, d), b.shares, b.how + ".squeeze()"};
      return {b.t.squeeze(d), ref_squeeze(b.r, d), b.shares, b.how + ".squeeze(" + std::to_string(d) + ")"};
    }
    case 6: {  // expand size-1 dims (and add leading dims)
      Dims B = W;
      const int lead = rint(g, 0, std::min(nd, 2));
      B.erase(B.begin(), B.begin() + lead);
      for (auto& x : B)
        if (chance(g, 50)) x = 1;
      auto b = make_operand<T>(g, B, depth - 1);
      return {b.t.expand(to_shape(W)), ref_expand(b.r, W), b.shares, b.how + ".expand(" + str(W) + ")"};
    }
    case 7: {  // reshape from a shape with two dims merged, a dim split, or 1s inserted
      Dims B = W;
      const int kind = rint(g, 0, 2);
      if (kind == 0 && nd >= 2) {
        const int d = rint(g, 0, nd - 2);
        B[static_cast<std::size_t>(d)] *= B[static_cast<std::size_t>(d) + 1];
        B.erase(B.begin() + d + 1);
      } else if (kind == 1 && nd >= 1 && nd < 7) {
        const int d = rint(g, 0, nd - 1);
        const index_t x = B[static_cast<std::size_t>(d)];
        index_t f = 1;
        for (index_t k = 2; k < x; ++k)
          if (x % k == 0 && chance(g, 50)) {
            f = k;
            break;
          }
        B[static_cast<std::size_t>(d)] = x / f;
        B.insert(B.begin() + d, f);
      } else if (nd < 7) {
        B.insert(B.begin() + rint(g, 0, nd), 1);
      }
      auto b = make_operand<T>(g, B, depth - 1);
      Dims Wspelled = W;
      if (!W.empty() && count(W) > 0 && chance(g, 30)) Wspelled[static_cast<std::size_t>(rint(g, 0, nd - 1))] = -1;
      auto t = b.t.reshape(to_shape(Wspelled));
      const bool shares = b.shares && t.storage() == b.t.storage();
      return {t, ref_reshape(b.r, W), shares, b.how + ".reshape(" + str(Wspelled) + ")"};
    }
    case 8: {  // contiguous() / clone()
      auto b = make_operand<T>(g, W, depth - 1);
      if (chance(g, 50)) {
        auto t = b.t.contiguous();
        const bool shares = b.shares && t.storage() == b.t.storage();
        return {t, shares ? b.r : ref_copy(b.r), shares, b.how + ".contiguous()"};
      }
      return {b.t.clone(), ref_copy(b.r), true, b.how + ".clone()"};
    }
    default:
      break;
  }
  return make_leaf<T>(g, W);
}

// make_operand with the shape drawn first and then the depth (a fixed order of draws, so the
// cases are the same whichever order a compiler evaluates function arguments in).
template <class T, class ShapeFn>
Operand<T> make_random_operand(Gen& g, ShapeFn&& shape, int depth_lo, int depth_hi) {
  const Dims W = shape();
  const int depth = rint(g, depth_lo, depth_hi);
  return make_operand<T>(g, W, depth);
}

// A random shape of lo..hi dims, extents 0..7, occasionally one long dim (full SIMD packets
// plus tails). Empty shapes are kept rarer than the uniform 1/8 per dim.
Dims random_shape(Gen& g, int lo, int hi, int big_percent = 12) {
  Dims s(static_cast<std::size_t>(rint(g, lo, hi)));
  for (auto& x : s) x = chance(g, 5) ? 0 : rint(g, 1, 7);
  if (!s.empty() && chance(g, big_percent)) s[static_cast<std::size_t>(rint(g, 0, static_cast<int>(s.size()) - 1))] = rint(g, 17, 70);
  return s;
}
// A shape that broadcasts to S: some leading dims dropped, some dims set to 1.
Dims broadcast_operand_shape(Gen& g, const Dims& S) {
  Dims w = S;
  const int drop = chance(g, 30) ? rint(g, 0, static_cast<int>(S.size())) : 0;
  w.erase(w.begin(), w.begin() + drop);
  for (auto& x : w)
    if (chance(g, 25)) x = 1;
  return w;
}

// First mismatch between kiln's `got` and the reference values `want` (empty when all match).
template <class T>
std::string compare(const Tensor<T>& got, const Dims& want_shape, const std::vector<double>& want, double rtol,
                    double atol) {
  if (to_dims(got.shape()) != want_shape) return "shape " + str(to_dims(got.shape())) + " != " + str(want_shape);
  auto v = got.to_vector();
  if (v.size() != want.size()) return "size differs";
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double x = static_cast<double>(v[i]), w = want[i];
    bool ok;
    if (std::isnan(w))
      ok = std::isnan(x);
    else if (std::isinf(w))
      ok = x == w;
    else
      ok = std::abs(x - w) <= atol + rtol * std::abs(w);
    if (!ok) {
      std::ostringstream os;
      os.precision(17);
      os << "element " << i << " of " << str(want_shape) << ": got " << x << " want " << w;
      return os.str();
    }
  }
  return {};
}
std::vector<double> values(const Ref& r) {
  std::vector<double> v;
  for (index_t i = 0; i < r.numel(); ++i) v.push_back(r[i]);
  return v;
}

template <class T>
constexpr double rtol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

// --- the expressions ---------------------------------------------------------------------------

constexpr int expression_count = 10;

template <class T>
Tensor<T> kiln_expression(int which, const Tensor<T>& a, const Tensor<T>& b, const Tensor<T>& c) {
  switch (which) {
    case 0: return a * b + c;
    case 1: return kiln::where(a > b, a, c);
    case 2: return kiln::maximum(a, b) - kiln::exp(c * T(0.1));
    case 3: return (a - b) / (kiln::abs(c) + T(1));
    case 4: return kiln::minimum(a, kiln::relu(b)) * kiln::sigmoid(c);
    case 5: return T(1) - kiln::tanh(a) * b + kiln::square(c);
    case 6: return kiln::where(a <= c, b, T(2));
    case 7: return kiln::clamp(a + b, -0.5, 0.5) * c;
    case 8: return (a == b) + (b != c) * T(2) + (c >= a) * T(4);
    default: return kiln::where(c, kiln::sqrt(kiln::abs(a)) + b, T(-1) * a);
  }
}
double ref_expression(int which, double a, double b, double c) {
  switch (which) {
    case 0: return a * b + c;
    case 1: return a > b ? a : c;
    case 2: return std::max(a, b) - std::exp(c * 0.1);
    case 3: return (a - b) / (std::abs(c) + 1);
    case 4: return std::min(a, std::max(b, 0.0)) * (1 / (1 + std::exp(-c)));
    case 5: return 1 - std::tanh(a) * b + c * c;
    case 6: return a <= c ? b : 2;
    case 7: return std::clamp(a + b, -0.5, 0.5) * c;
    case 8: return (a == b ? 1 : 0) + (b != c ? 2 : 0) + (c >= a ? 4 : 0);
    default: return c != 0 ? std::sqrt(std::abs(a)) + b : -a;
  }
}

template <class T>
void check_operand(const Operand<T>& x) {
  INFO("chain: " << x.how);
  const std::string m = compare(x.t, x.r.shape, values(x.r), 0, 0);
  CHECK_MESSAGE(m.empty(), m);
  if (x.shares && x.r.numel() > 0) {
    // The view must address exactly the reference's base elements.
    bool ok = true;
    for_each_index(x.r.shape, [&](const Dims& c, index_t i) {
      index_t off = x.t.offset();
      for (std::size_t d = 0; d < c.size(); ++d) off += c[d] * x.t.strides().dims[d];
      if (off != x.r.idx[static_cast<std::size_t>(i)]) ok = false;
    });
    CHECK_MESSAGE(ok, "strides/offset do not address the expected elements");
  }
}

template <class T>
void random_elementwise(Gen& g, int cases, int& checked) {
  for (int k = 0; k < cases; ++k) {
    const Dims S = random_shape(g, 0, 4);
    const int nops = rint(g, 2, 3);
    auto bshape = [&] { return broadcast_operand_shape(g, S); };
    auto a = make_random_operand<T>(g, bshape, 0, 3);
    auto b = make_random_operand<T>(g, bshape, 0, 3);
    auto c = nops == 3 ? make_random_operand<T>(g, bshape, 0, 3) : a;
    const int which = rint(g, 0, expression_count - 1);
    INFO("case " << k << " expression " << which << "\n a = " << a.how << "\n b = " << b.how << "\n c = " << c.how);
    check_operand(a);
    check_operand(b);
    Dims ab, out;
    REQUIRE(ref_broadcast(a.r.shape, b.r.shape, ab));
    REQUIRE(ref_broadcast(ab, c.r.shape, out));
    std::vector<double> want;
    for_each_index(out, [&](const Dims& ci, index_t) {
      want.push_back(ref_expression(which, ref_at_broadcast(a.r, out, ci), ref_at_broadcast(b.r, out, ci),
                                    ref_at_broadcast(c.r, out, ci)));
    });
    Tensor<T> got = kiln_expression(which, a.t, b.t, c.t);
    const std::string m = compare(got, out, want, rtol<T>(), rtol<T>());
    CHECK_MESSAGE(m.empty(), m);
    ++checked;
  }
}

// Operand shapes that must not broadcast: two operands disagree (both != 1) at one aligned dim.
template <class T>
void random_incompatible(Gen& g, int cases, int& checked) {
  for (int k = 0; k < cases; ++k) {
    Dims S = random_shape(g, 1, 4, 0);
    Dims wa = broadcast_operand_shape(g, S), wb = broadcast_operand_shape(g, S), wc = broadcast_operand_shape(g, S);
    const std::size_t n = S.size();
    const std::size_t d = static_cast<std::size_t>(rint(g, 0, static_cast<int>(n) - 1));  // aligned from the right
    // make both wa and (wb or wc) have that dim, with different extents, neither 1
    auto ensure = [&](Dims& w) {
      while (w.size() < n - d) w.insert(w.begin(), 1);
    };
    const bool third = chance(g, 40);
    Dims& other = third ? wc : wb;
    ensure(wa);
    ensure(other);
    const index_t x = rint(g, 0, 6), y = (x + rint(g, 1, 5)) % 7;  // x != y
    auto fix = [](index_t v) { return v == 1 ? index_t(7) : v; };
    wa[wa.size() - (n - d)] = fix(x);
    other[other.size() - (n - d)] = fix(y);
    if (fix(x) == fix(y)) continue;
    auto a = make_operand<T>(g, wa, 2), b = make_operand<T>(g, wb, 2), c = make_operand<T>(g, wc, 2);
    const int which = rint(g, 0, expression_count - 1);
    INFO("incompatible: a " << str(wa) << " b " << str(wb) << " c " << str(wc) << " expression " << which);
    Dims ab, out;
    REQUIRE_FALSE((ref_broadcast(wa, wb, ab) && ref_broadcast(ab, wc, out)));
    CHECK_THROWS_AS(kiln_expression(which, a.t, b.t, c.t), kiln::ShapeError);
    ++checked;
  }
}

}  // namespace

TEST_CASE("random view chains address the reference elements") {
  Gen g(20240601);
  int checked = 0;
  for (int k = 0; k < 300; ++k) {
    const Dims W = random_shape(g, 0, 5);
    auto x = make_operand<float>(g, W, rint(g, 1, 4));
    INFO("case " << k);
    check_operand(x);
    // contiguous() and clone() keep the values
    CHECK(x.t.contiguous().to_vector() == x.t.to_vector());
    auto c = x.t.clone();
    CHECK(c.is_contiguous());
    CHECK(c.storage() != x.t.storage());
    ++checked;
  }
  MESSAGE(checked << " view chains checked");
}

TEST_CASE("view() succeeds exactly when the elements are strided, reshape() always") {
  Gen g(777);
  int views = 0, refused = 0;
  for (int k = 0; k < 300; ++k) {
    auto x = make_random_operand<double>(g, [&] { return random_shape(g, 0, 4); }, 1, 4);
    if (!x.shares) continue;
    // A random target shape with the same element count: a random factorisation.
    const index_t n = x.r.numel();
    Dims to;
    if (n == 0) {
      to = random_shape(g, 1, 3);
      to[static_cast<std::size_t>(rint(g, 0, static_cast<int>(to.size()) - 1))] = 0;
    } else {
      index_t rest = n;
      while (rest > 1 && to.size() < 5) {
        index_t f = rest;
        for (index_t p = 2; p <= rest; ++p)
          if (rest % p == 0 && chance(g, 50)) {
            f = p;
            break;
          }
        if (chance(g, 40)) f = rest;
        to.push_back(f);
        rest /= f;
        if (chance(g, 15)) to.push_back(1);
      }
      if (rest > 1) to.push_back(rest);
      if (chance(g, 20)) to.insert(to.begin(), 1);
    }
    INFO("case " << k << ": " << x.how << " viewed as " << str(to));
    const Ref want = ref_reshape(x.r, to);
    Dims strides;
    const bool possible = ref_strided(want, strides);
    Operand<double> v{Tensor<double>(), want, true, x.how + ".view(" + str(to) + ")"};
    bool threw = false;
    try {
      v.t = x.t.view(to_shape(to));
    } catch (const kiln::ShapeError&) {
      threw = true;
    }
    CHECK(threw == !possible);
    if (!threw) {
      check_operand(v);
      ++views;
    } else {
      ++refused;
    }
    Operand<double> r{x.t.reshape(to_shape(to)), want, false, x.how + ".reshape(" + str(to) + ")"};
    check_operand(r);
  }
  MESSAGE(views << " views taken, " << refused << " correctly refused");
}

TEST_CASE("random broadcast expressions over random views (float and double)") {
  Gen g(12345);
  int checked = 0;
  random_elementwise<float>(g, 250, checked);
  random_elementwise<double>(g, 150, checked);
  MESSAGE(checked << " expressions checked element by element");
}

TEST_CASE("operands that cannot broadcast throw ShapeError") {
  Gen g(999);
  int checked = 0;
  random_incompatible<float>(g, 60, checked);
  random_incompatible<double>(g, 20, checked);
  MESSAGE(checked << " incompatible combinations checked");
}

// --- assign into views, with aliasing ----------------------------------------------------------

namespace {

// Every element of the storage a view lives in, as T (the storage of a `shares` operand is
// indexed exactly like its reference base).
template <class T>
std::vector<double> storage_values(const Tensor<T>& t) {
  const T* p = static_cast<const T*>(t.storage()->data);
  std::vector<double> v;
  for (std::size_t i = 0; i < t.storage()->bytes / sizeof(T); ++i) v.push_back(static_cast<double>(p[i]));
  return v;
}
std::string compare_values(const std::vector<double>& got, const std::vector<double>& want, double rtol) {
  if (got.size() != want.size()) return "sizes differ";
  for (std::size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= rtol + rtol * std::abs(want[i]))) {
      std::ostringstream os;
      os.precision(17);
      os << "storage element " << i << ": got " << got[i] << " want " << want[i];
      return os.str();
    }
  return {};
}
bool distinct_elements(const Ref& r) {
  std::vector<index_t> s = r.idx;
  std::sort(s.begin(), s.end());
  return std::adjacent_find(s.begin(), s.end()) == s.end();
}

// A view of the same storage as `x` with shape `shape` and random (possibly overlapping,
// possibly zero) strides and offset inside the storage, built with from_parts.
template <class T>
Operand<T> random_alias(Gen& g, const Operand<T>& x, const Dims& shape) {
  const index_t size = static_cast<index_t>(x.r.base->size());
  Dims strides(shape.size());
  index_t span = 0;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    strides[d] = chance(g, 15) ? 0 : rint(g, 1, 9);
    if (shape[d] > 0) span += (shape[d] - 1) * strides[d];
  }
  if (span >= size) {  // fall back to the layout of x itself shifted to fit
    for (auto& s : strides) s = 0;
    span = 0;
  }
  const index_t offset = rint(g, 0, static_cast<int>(size - 1 - span));
  Ref r{shape, {}, x.r.base};
  for_each_index(shape, [&](const Dims& c, index_t) {
    index_t o = offset;
    for (std::size_t d = 0; d < c.size(); ++d) o += c[d] * strides[d];
    r.idx.push_back(o);
  });
  auto t = Tensor<T>::from_parts(x.t.storage(), to_shape(shape), to_shape(strides), offset);
  return {t, r, true, "alias(" + str(shape) + " strides " + str(strides) + " offset " + std::to_string(offset) + ")"};
}

// A permutation q with shape[q[i]] == shape[i] (so the permuted view has the same shape).
std::vector<int> shape_preserving_perm(Gen& g, const Dims& shape) {
  const int n = static_cast<int>(shape.size());
  for (int tries = 0; tries < 20; ++tries) {
    auto q = random_perm(g, n);
    bool ok = true;
    for (int i = 0; i < n; ++i) ok = ok && shape[static_cast<std::size_t>(q[static_cast<std::size_t>(i)])] == shape[static_cast<std::size_t>(i)];
    if (ok) return q;
  }
  std::vector<int> id(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) id[static_cast<std::size_t>(i)] = i;
  return id;
}

// A view of the cube `base` ([n]*k): permuted, then each dim sliced to lengths[i] with a random
// start and the largest step (at most 3) that fits; then optionally a select and an unsqueeze.
template <class T>
Operand<T> cube_view(Gen& g, const Operand<T>& base, index_t n, const Dims& lengths, int select_dim, int unsq_dim) {
  const int k = static_cast<int>(lengths.size());
  auto p = random_perm(g, k);
  Operand<T> v{kpermute(base.t, p), ref_permute(base.r, p), true, "cube.permute" + str(p)};
  for (int i = 0; i < k; ++i) {
    const index_t L = lengths[static_cast<std::size_t>(i)];
    index_t step = rint(g, 1, 3);
    while (step > 1 && (L - 1) * step + 1 > n) --step;
    const index_t len = L > 0 ? (L - 1) * step + 1 : 0;
    const index_t start = rint(g, 0, static_cast<int>(n - len));
    const index_t end = start + len;
    v = {v.t.slice(i, start, end, step), ref_slice(v.r, i, start, end, step), true,
         v.how + ".slice(" + std::to_string(i) + "," + std::to_string(start) + "," + std::to_string(end) + "," +
             std::to_string(step) + ")"};
  }
  if (select_dim >= 0 && v.r.shape[static_cast<std::size_t>(select_dim)] > 0) {
    const index_t i = rint(g, 0, static_cast<int>(v.r.shape[static_cast<std::size_t>(select_dim)]) - 1);
    v = {v.t.select(select_dim, i), ref_select(v.r, select_dim, i), true,
         v.how + ".select(" + std::to_string(select_dim) + "," + std::to_string(i) + ")"};
  }
  if (unsq_dim >= 0 && unsq_dim <= static_cast<int>(v.r.shape.size()))
    v = {v.t.unsqueeze(unsq_dim), ref_unsqueeze(v.r, unsq_dim), true, v.how + ".unsqueeze(" + std::to_string(unsq_dim) + ")"};
  return v;
}

template <class T>
void random_cube_assign(Gen& g, int cases, int& checked) {
  for (int c = 0; c < cases; ++c) {
    const int k = rint(g, 1, 4);
    const index_t n = k == 2 && chance(g, 20) ? rint(g, 17, 40) : rint(g, 1, 7);
    auto base = make_leaf<T>(g, Dims(static_cast<std::size_t>(k), n));
    Dims lengths(static_cast<std::size_t>(k));
    const index_t same = rint(g, 0, static_cast<int>(n));
    for (auto& L : lengths) L = chance(g, 60) ? same : rint(g, 0, static_cast<int>(n));
    const int select_dim = k > 1 && chance(g, 25) ? rint(g, 0, k - 1) : -1;
    const int unsq_dim = chance(g, 20) ? rint(g, 0, k - (select_dim >= 0 ? 1 : 0)) : -1;
    auto D = cube_view(g, base, n, lengths, select_dim, unsq_dim);
    auto V = cube_view(g, base, n, lengths, select_dim, unsq_dim);
    if (D.r.shape != V.r.shape) continue;  // a select on an empty dim was skipped in one of them
    const auto q = shape_preserving_perm(g, D.r.shape);
    const auto Dq = Operand<T>{kpermute(D.t, q), ref_permute(D.r, q), true, "D.permute" + str(q)};
    const auto Vq = Operand<T>{kpermute(V.t, q), ref_permute(V.r, q), true, "V.permute" + str(q)};
    auto L = make_operand<T>(g, broadcast_operand_shape(g, D.r.shape), 2);
    const int kind = rint(g, 0, 8);
    INFO("case " << c << " kind " << kind << "\n D = " << D.how << "\n V = " << V.how << "\n q = " << str(q)
                 << "\n L = " << L.how);
    // The reference value of every element of D, from the storage before the write.
    std::vector<double> want_store = *base.r.base;
    const Dims& S = D.r.shape;
    for_each_index(S, [&](const Dims& ci, index_t i) {
      const double d = D.r[i], v = V.r[i], dq = Dq.r[i], vq = Vq.r[i], l = ref_at_broadcast(L.r, S, ci);
      double w = 0;
      switch (kind) {
        case 0: w = v * 2 + d; break;
        case 1: w = v; break;
        case 2: w = d + v; break;
        case 3: w = d * (v - 1); break;
        case 4: w = dq * 2; break;
        case 5: w = v + l; break;
        case 6: w = 3; break;
        case 7: w = std::max(v, vq) - d; break;
        default: w = dq - v * l; break;
      }
      want_store[static_cast<std::size_t>(D.r.idx[static_cast<std::size_t>(i)])] = static_cast<double>(static_cast<T>(w));
    });
    Tensor<T> dst = D.t;
    switch (kind) {
      case 0: dst.assign(V.t * T(2) + D.t); break;
      case 1: dst.assign(V.t); break;
      case 2: dst += V.t; break;
      case 3: dst *= V.t - T(1); break;
      case 4: dst.assign(Dq.t * T(2)); break;
      case 5: dst.assign(V.t + L.t); break;
      case 6: dst.assign(T(3)); break;
      case 7: dst.assign(kiln::maximum(V.t, Vq.t) - D.t); break;
      default: dst.assign(Dq.t - V.t * L.t); break;
    }
    const std::string m = compare_values(storage_values(base.t), want_store, rtol<T>());
    CHECK_MESSAGE(m.empty(), m);
    ++checked;
  }
}

template <class T>
void random_alias_assign(Gen& g, int cases, int& checked) {
  for (int c = 0; c < cases; ++c) {
    auto D = make_random_operand<T>(g, [&] { return random_shape(g, 1, 4); }, 1, 4);
    if (!D.shares || D.r.numel() == 0 || !distinct_elements(D.r)) continue;
    const Dims& S = D.r.shape;
    auto A = random_alias(g, D, broadcast_operand_shape(g, S));
    auto B = chance(g, 50) ? random_alias(g, D, broadcast_operand_shape(g, S))
                           : make_operand<T>(g, broadcast_operand_shape(g, S), 2);
    const int kind = rint(g, 0, 3);
    INFO("case " << c << " kind " << kind << "\n D = " << D.how << "\n A = " << A.how << "\n B = " << B.how);
    std::vector<double> want_store = *D.r.base;
    for_each_index(S, [&](const Dims& ci, index_t i) {
      const double d = D.r[i], a = ref_at_broadcast(A.r, S, ci), b = ref_at_broadcast(B.r, S, ci);
      double w = 0;
      switch (kind) {
        case 0: w = a; break;
        case 1: w = a * b + d; break;
        case 2: w = d - a; break;
        default: w = a > b ? a : d; break;
      }
      want_store[static_cast<std::size_t>(D.r.idx[static_cast<std::size_t>(i)])] = static_cast<double>(static_cast<T>(w));
    });
    Tensor<T> dst = D.t;
    switch (kind) {
      case 0: dst.assign(A.t); break;
      case 1: dst.assign(A.t * B.t + D.t); break;
      case 2: dst -= A.t; break;
      default: dst.assign(kiln::where(A.t > B.t, A.t, D.t)); break;
    }
    const std::string m = compare_values(storage_values(D.t), want_store, rtol<T>());
    CHECK_MESSAGE(m.empty(), m);
    ++checked;
  }
}

}  // namespace

TEST_CASE("assign into random strided views of a cube, reading overlapping views of it") {
  Gen g(31337);
  int checked = 0;
  random_cube_assign<float>(g, 200, checked);
  random_cube_assign<double>(g, 100, checked);
  MESSAGE(checked << " aliasing assigns checked against the whole storage");
}

TEST_CASE("assign into random views, reading arbitrary strided aliases of the same storage") {
  Gen g(2718);
  int checked = 0;
  random_alias_assign<float>(g, 200, checked);
  random_alias_assign<double>(g, 100, checked);
  MESSAGE(checked << " assigns through from_parts aliases checked");
}

TEST_CASE("assign: transposed square views, shifted overlapping slices, errors leave data alone") {
  Gen g(1618);
  for (int c = 0; c < 40; ++c) {
    const index_t n = chance(g, 30) ? rint(g, 9, 40) : rint(g, 1, 8);
    auto base = make_leaf<float>(g, {n + 3, n + 5});
    // v = a square view with steps; v.assign(v.t() * 2)
    const index_t r0 = rint(g, 0, 3), c0 = rint(g, 0, 5);
    auto v = base.t.slice(0, r0, r0 + n).slice(1, c0, c0 + n);
    const Ref vr = ref_slice(ref_slice(base.r, 0, r0, r0 + n, 1), 1, c0, c0 + n, 1);
    std::vector<double> want = *base.r.base;
    for_each_index(vr.shape, [&](const Dims& ci, index_t i) {
      want[static_cast<std::size_t>(vr.idx[static_cast<std::size_t>(i)])] = 2 * vr[flat_index(vr.shape, {ci[1], ci[0]})];
    });
    v.assign(v.t() * 2.0f);
    INFO("case " << c << " n " << n);
    std::string m = compare_values(storage_values(base.t), want, 0);
    CHECK_MESSAGE(m.empty(), m);

    // shifted overlapping rows: x[s:] = x[:-s] + 1 along a flattened view
    auto flat = base.t.reshape({-1});
    const index_t len = flat.numel();
    const index_t s = rint(g, 1, 3), step = rint(g, 1, 2);
    auto dst = flat.slice(0, s, len, step), src = flat.slice(0, 0, len - s, step);
    const Ref fr = ref_reshape(base.r, {len});
    Ref dr = ref_slice(fr, 0, s, len, step), sr = ref_slice(fr, 0, 0, len - s, step);
    const std::vector<double> before = storage_values(base.t);
    want = before;
    Ref srb = sr;
    srb.base = std::make_shared<std::vector<double>>(before);
    if (dr.numel() == sr.numel()) {
      for (index_t i = 0; i < dr.numel(); ++i)
        want[static_cast<std::size_t>(dr.idx[static_cast<std::size_t>(i)])] = static_cast<float>(srb[i] + 1.0);
      dst.assign(src + 1.0f);
      m = compare_values(storage_values(base.t), want, 0);
      CHECK_MESSAGE(m.empty(), m);
    }
    // errors: an expanded destination, a value that does not broadcast; nothing is written
    const std::vector<double> kept = storage_values(base.t);
    auto row = base.t.select(0, 0).unsqueeze(0).expand({3, n + 5});
    CHECK_THROWS_AS(row.assign(base.t.slice(0, 0, 3) * 2.0f), kiln::ShapeError);
    auto wrong = make_leaf<float>(g, {n + 4});
    CHECK_THROWS_AS(base.t.assign(wrong.t + 1.0f), kiln::ShapeError);
    CHECK_THROWS_AS(base.t.t().assign(base.t), kiln::ShapeError);  // [n+5, n+3] vs [n+3, n+5]
    CHECK(storage_values(base.t) == kept);
  }
}

// --- reductions ---------------------------------------------------------------------------------

namespace {

enum class Op { sum, mean, max, min, var0, var1, logsumexp, argmax, argmin };
constexpr Op all_ops[] = {Op::sum, Op::mean, Op::max, Op::min, Op::var0, Op::var1, Op::logsumexp, Op::argmax, Op::argmin};
const char* op_name(Op op) {
  switch (op) {
    case Op::sum: return "sum";
    case Op::mean: return "mean";
    case Op::max: return "max";
    case Op::min: return "min";
    case Op::var0: return "var(correction 0)";
    case Op::var1: return "var";
    case Op::logsumexp: return "logsumexp";
    case Op::argmax: return "argmax";
    default: return "argmin";
  }
}
bool needs_elements(Op op) { return op == Op::max || op == Op::min || op == Op::argmax || op == Op::argmin; }

// The reference reduction of xs (in order) and the tolerance it deserves for element type T.
template <class T>
double ref_reduce(Op op, const std::vector<double>& xs, double& tol) {
  const double eps = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  const double n = static_cast<double>(xs.size());
  double s = 0, abs_sum = 0;
  for (double x : xs) {
    s += x;
    abs_sum += std::abs(x);
  }
  tol = 0;
  switch (op) {
    case Op::sum: tol = eps * (abs_sum + 1); return s;
    case Op::mean: tol = eps * (abs_sum / std::max(n, 1.0) + 1); return xs.empty() ? std::nan("") : s / n;
    case Op::max: return *std::max_element(xs.begin(), xs.end());
    case Op::min: return *std::min_element(xs.begin(), xs.end());
    case Op::var0:
    case Op::var1: {
      const double corr = op == Op::var0 ? 0 : 1;
      if (n - corr <= 0) return std::nan("");
      double ss = 0;
      for (double x : xs) ss += (x - s / n) * (x - s / n);
      tol = 10 * eps * (ss / (n - corr) + 1);
      return ss / (n - corr);
    }
    case Op::logsumexp: {
      if (xs.empty()) return -std::numeric_limits<double>::infinity();
      const double m = *std::max_element(xs.begin(), xs.end());
      double e = 0;
      for (double x : xs) e += std::exp(x - m);
      tol = eps * (std::abs(m) + 1);
      return m + std::log(e);
    }
    case Op::argmax: return static_cast<double>(std::max_element(xs.begin(), xs.end()) - xs.begin());  // first
    default: return static_cast<double>(std::min_element(xs.begin(), xs.end()) - xs.begin());
  }
}

template <class T, class X>
std::vector<double> kiln_reduce_axis(Op op, const X& x, int axis, bool keepdim, Dims& shape) {
  auto grab = [&](const auto& t) {
    shape = to_dims(t.shape());
    std::vector<double> v;
    for (auto e : t.to_vector()) v.push_back(static_cast<double>(e));
    return v;
  };
  switch (op) {
    case Op::sum: return grab(kiln::sum(x, axis, keepdim));
    case Op::mean: return grab(kiln::mean(x, axis, keepdim));
    case Op::max: return grab(kiln::max(x, axis, keepdim));
    case Op::min: return grab(kiln::min(x, axis, keepdim));
    case Op::var0: return grab(kiln::var(x, axis, 0.0, keepdim));
    case Op::var1: return grab(kiln::var(x, axis, 1.0, keepdim));
    case Op::logsumexp: return grab(kiln::logsumexp(x, axis, keepdim));
    case Op::argmax: return grab(kiln::argmax(x, axis, keepdim));
    default: return grab(kiln::argmin(x, axis, keepdim));
  }
}
template <class T, class X>
double kiln_reduce_all(Op op, const X& x) {
  switch (op) {
    case Op::sum: return kiln::sum(x).item();
    case Op::mean: return kiln::mean(x).item();
    case Op::max: return kiln::max(x).item();
    case Op::min: return kiln::min(x).item();
    case Op::var0: return std::nan("");  // no reduce-all form with a correction
    case Op::var1: return kiln::var(x).item();
    case Op::logsumexp: return kiln::logsumexp(x).item();
    case Op::argmax: return static_cast<double>(kiln::argmax(x).item());
    default: return static_cast<double>(kiln::argmin(x).item());
  }
}

bool close(double got, double want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::abs(got - want) <= tol;
}

template <class T>
void random_reductions(Gen& g, int cases, int& checked) {
  for (int c = 0; c < cases; ++c) {
    auto x = make_random_operand<T>(g, [&] { return random_shape(g, 0, 4, 25); }, 1, 3);
    const bool through_expr = chance(g, 20);  // reduce x * 1 (an expression) instead of the view
    const Dims& W = x.r.shape;
    const int nd = static_cast<int>(W.size());
    INFO("case " << c << ": " << x.how << (through_expr ? " * 1" : ""));
    const std::vector<double> xs = values(x.r);
    for (Op op : all_ops) {
      INFO(op_name(op));
      // over everything
      if (op != Op::var0) {
        if (needs_elements(op) && xs.empty()) {
          if (through_expr)
            CHECK_THROWS_AS(kiln_reduce_all<T>(op, x.t * T(1)), kiln::ShapeError);
          else
            CHECK_THROWS_AS(kiln_reduce_all<T>(op, x.t), kiln::ShapeError);
        } else {
          double tol;
          const double want = ref_reduce<T>(op, xs, tol);
          const double got = through_expr ? kiln_reduce_all<T>(op, x.t * T(1)) : kiln_reduce_all<T>(op, x.t);
          CHECK_MESSAGE(close(got, want, tol), "all: got " << got << " want " << want);
        }
      }
      // along each axis (a 0-d tensor is reduced as if it were [1])
      const Dims V = nd == 0 ? Dims{1} : W;
      for (int axis = 0; axis < static_cast<int>(V.size()); ++axis)
        for (bool keepdim : {false, true}) {
          if (nd == 0 && keepdim) continue;  // kiln keeps a [1] here where PyTorch keeps []
          const int spelled = chance(g, 40) ? axis - static_cast<int>(V.size()) : axis;
          INFO("axis " << spelled << " keepdim " << keepdim);
          const index_t R = V[static_cast<std::size_t>(axis)];
          Dims out_shape;
          for (int d = 0; d < static_cast<int>(V.size()); ++d)
            if (d != axis)
              out_shape.push_back(V[static_cast<std::size_t>(d)]);
            else if (keepdim)
              out_shape.push_back(1);
          if (nd == 0) out_shape.clear();
          Dims got_shape;
          if (needs_elements(op) && R == 0) {
            if (through_expr)
              CHECK_THROWS_AS(kiln_reduce_axis<T>(op, x.t * T(1), spelled, keepdim, got_shape), kiln::ShapeError);
            else
              CHECK_THROWS_AS(kiln_reduce_axis<T>(op, x.t, spelled, keepdim, got_shape), kiln::ShapeError);
            continue;
          }
          const auto got = through_expr ? kiln_reduce_axis<T>(op, x.t * T(1), spelled, keepdim, got_shape)
                                        : kiln_reduce_axis<T>(op, x.t, spelled, keepdim, got_shape);
          CHECK(got_shape == out_shape);
          // reference: for each output position, the values along the axis
          Dims rest = V;
          rest[static_cast<std::size_t>(axis)] = 1;
          std::string bad;
          for_each_index(rest, [&](const Dims& ci, index_t o) {
            std::vector<double> along;
            Dims cc = ci;
            for (index_t r = 0; r < R; ++r) {
              cc[static_cast<std::size_t>(axis)] = r;
              along.push_back(xs[static_cast<std::size_t>(nd == 0 ? 0 : flat_index(V, cc))]);
            }
            double tol;
            const double want = ref_reduce<T>(op, along, tol);
            if (static_cast<std::size_t>(o) >= got.size()) {
              if (bad.empty()) bad = "too few outputs";
            } else if (!close(got[static_cast<std::size_t>(o)], want, tol) && bad.empty()) {
              std::ostringstream os;
              os.precision(17);
              os << "output " << o << ": got " << got[static_cast<std::size_t>(o)] << " want " << want;
              bad = os.str();
            }
          });
          CHECK_MESSAGE(bad.empty(), bad);
        }
    }
    ++checked;
  }
}

}  // namespace

TEST_CASE("reductions over every axis of random views") {
  Gen g(8086);
  int checked = 0;
  random_reductions<float>(g, 150, checked);
  random_reductions<double>(g, 100, checked);
  MESSAGE(checked << " tensors reduced over all, and over each axis with keepdim false/true");
}

// --- matmul -----------------------------------------------------------------------------------

namespace {

template <class T>
void random_matmuls(Gen& g, int cases, int& checked) {
  for (int c = 0; c < cases; ++c) {
    auto ext = [&] { return static_cast<index_t>(chance(g, 10) ? rint(g, 10, 40) : rint(g, chance(g, 5) ? 0 : 1, 9)); };
    index_t M = ext(), N = ext();
    const index_t K = chance(g, 5) ? 0 : ext();
    Dims batch(static_cast<std::size_t>(rint(g, 0, 2)));
    for (auto& b : batch) b = rint(g, 1, 4);
    const int kind = rint(g, 0, 9);  // 0: a is 1-d, 1: b is 1-d, 2: both
    Dims wa = broadcast_operand_shape(g, batch), wb = broadcast_operand_shape(g, batch);
    if (kind == 0 || kind == 2) wa.clear();
    if (kind == 1 || kind == 2) wb.clear();
    wa.push_back(M);
    if (kind != 0 && kind != 2) wa.push_back(K);
    else wa.back() = K;
    if (kind == 1 || kind == 2) {
      wb.push_back(K);
    } else {
      wb.push_back(K);
      wb.push_back(N);
    }
    if (kind == 0 || kind == 2) M = 1;  // a 1-d left operand is a row
    if (kind == 1 || kind == 2) N = 1;  // a 1-d right operand is a column
    auto a = make_operand<T>(g, wa, rint(g, 0, 3));
    auto b = make_operand<T>(g, wb, rint(g, 0, 3));
    INFO("case " << c << "\n a = " << a.how << "\n b = " << b.how);
    // reference: NumPy matmul semantics
    Dims A = a.r.shape, B = b.r.shape;
    if (A.size() == 1) A.insert(A.begin(), 1);
    if (B.size() == 1) B.push_back(1);
    const Dims ab(A.begin(), A.end() - 2), bb(B.begin(), B.end() - 2);
    Dims bt;
    REQUIRE(ref_broadcast(ab, bb, bt));
    Dims out = bt;
    if (a.r.shape.size() > 1) out.push_back(M);
    if (b.r.shape.size() > 1) out.push_back(N);
    std::vector<double> want;
    double worst = 0;
    Dims full = bt;
    full.push_back(M);
    full.push_back(N);
    for_each_index(full, [&](const Dims& ci, index_t) {
      const Dims bi(ci.begin(), ci.end() - 2);
      double s = 0, s_abs = 0;
      for (index_t k = 0; k < K; ++k) {
        Dims ca = bi, cb = bi;
        ca.push_back(ci[ci.size() - 2]);
        ca.push_back(k);
        cb.push_back(k);
        cb.push_back(ci.back());
        Ref ar = a.r, br = b.r;  // the 1-d operands seen as [1, K] and [K, 1]
        ar.shape = A;
        br.shape = B;
        const double x = [&] {
          Dims cfull = bt;
          cfull.push_back(M);
          cfull.push_back(K);
          return ref_at_broadcast(ar, cfull, ca);
        }();
        const double y = [&] {
          Dims cfull = bt;
          cfull.push_back(K);
          cfull.push_back(N);
          return ref_at_broadcast(br, cfull, cb);
        }();
        s += x * y;
        s_abs += std::abs(x * y);
      }
      worst = std::max(worst, s_abs);
      want.push_back(s);
    });
    auto got = kiln::matmul(a.t, b.t);
    const double tol = (std::is_same_v<T, float> ? 1e-5 : 1e-13) * (worst + 1);
    const std::string m = compare(got, out, want, 0, tol);
    CHECK_MESSAGE(m.empty(), m);
    // inner extents that differ, or batch dims that do not broadcast, throw ShapeError
    if (b.r.shape.size() >= 2 && chance(g, 20)) {
      auto wrong = make_leaf<T>(g, {K + 1, N});
      CHECK_THROWS_AS(kiln::matmul(a.t, wrong.t), kiln::ShapeError);
    }
    ++checked;
  }
}

}  // namespace

TEST_CASE("matmul of random transposed, sliced and broadcast-batched operands") {
  Gen g(4004);
  int checked = 0;
  random_matmuls<float>(g, 150, checked);
  random_matmuls<double>(g, 100, checked);
  // batch dims that do not broadcast
  auto a = make_leaf<float>(g, {2, 3, 4}), b = make_leaf<float>(g, {3, 4, 5});
  CHECK_THROWS_AS(kiln::matmul(a.t, b.t), kiln::ShapeError);
  MESSAGE(checked << " products checked");
}

// --- thread-count independence ---------------------------------------------------------------

namespace {

template <class T>
void append_bits(std::vector<unsigned char>& out, const Tensor<T>& t) {
  const auto v = t.to_vector();
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  out.insert(out.end(), p, p + v.size() * sizeof(T));
  const index_t n = t.dim();
  const auto* q = reinterpret_cast<const unsigned char*>(&n);
  out.insert(out.end(), q, q + sizeof n);
}

}  // namespace

TEST_CASE("large random views: the same bits with 1, 2 and 3 threads") {
  const int saved = kiln::num_threads();
  Gen g(5150);
  for (int c = 0; c < 8; ++c) {
    Dims W;
    switch (c % 4) {
      case 0: W = {rint(g, 250, 300), rint(g, 260, 300)}; break;            // > 2 elementwise grains
      case 1: W = {rint(g, 40, 50), rint(g, 30, 40), rint(g, 45, 60)}; break;
      case 2: W = {rint(g, 2, 3), rint(g, 33000, 40000)}; break;             // blocked long rows
      default: W = {rint(g, 9000, 12000), rint(g, 7, 9)}; break;             // many short rows
    }
    auto a = make_operand<float>(g, W, 3);
    auto b = make_operand<float>(g, broadcast_operand_shape(g, W), 3);
    auto d = make_operand<double>(g, W, 3);
    const int which = rint(g, 0, expression_count - 1);
    INFO("case " << c << " expression " << which << "\n a = " << a.how << "\n b = " << b.how << "\n d = " << d.how);
    // the elementwise result against the reference once
    {
      Dims out;
      REQUIRE(ref_broadcast(a.r.shape, b.r.shape, out));
      std::vector<double> want;
      for_each_index(out, [&](const Dims& ci, index_t) {
        const double x = ref_at_broadcast(a.r, out, ci), y = ref_at_broadcast(b.r, out, ci);
        want.push_back(ref_expression(which, x, y, x));
      });
      const std::string m = compare(kiln_expression(which, a.t, b.t, a.t), out, want, rtol<float>(), rtol<float>());
      CHECK_MESSAGE(m.empty(), m);
    }
    // sum, max and argmax along each axis against the reference once (chunked inner loops,
    // blocked long rows)
    {
      const std::vector<double> xs = values(a.r);
      for (int axis = 0; axis < static_cast<int>(W.size()); ++axis) {
        Dims rest = W, out_shape = W;
        rest[static_cast<std::size_t>(axis)] = 1;
        out_shape.erase(out_shape.begin() + axis);
        std::vector<double> wsum, wmax, warg;
        double tol = 0;
        for_each_index(rest, [&](const Dims& ci, index_t) {
          std::vector<double> along;
          Dims cc = ci;
          for (index_t r = 0; r < W[static_cast<std::size_t>(axis)]; ++r) {
            cc[static_cast<std::size_t>(axis)] = r;
            along.push_back(xs[static_cast<std::size_t>(flat_index(W, cc))]);
          }
          double t;
          wsum.push_back(ref_reduce<float>(Op::sum, along, t));
          // Along a non-innermost axis kiln adds the R terms one after another in float, so
          // the error grows like R * eps (8e-5 relative seen for R = 11454): allow 1e-3 here.
          tol = std::max(tol, 100 * t);
          wmax.push_back(ref_reduce<float>(Op::max, along, t));
          warg.push_back(ref_reduce<float>(Op::argmax, along, t));
        });
        INFO("axis " << axis);
        std::string m;
        CHECK_MESSAGE((m = compare(kiln::sum(a.t, axis), out_shape, wsum, 0, tol)).empty(), "sum: " << m);
        CHECK_MESSAGE((m = compare(kiln::max(a.t, axis), out_shape, wmax, 0, 0)).empty(), "max: " << m);
        const auto am = kiln::argmax(a.t, axis).to_vector();
        CHECK(std::vector<double>(am.begin(), am.end()) == warg);
      }
    }
    auto run = [&] {
      std::vector<unsigned char> bits;
      append_bits(bits, kiln_expression(which, a.t, b.t, a.t));
      append_bits(bits, Tensor<double>(kiln::exp(d.t * 0.01) - d.t * d.t));
      // assign into a transposed copy reading a transposed alias of itself
      auto dst = a.t.clone();
      auto dv = dst.t();
      dv.assign(dv * 0.5f + kiln::sigmoid(dst.t()));
      append_bits(bits, dst);
      for (int axis = 0; axis < static_cast<int>(W.size()); ++axis) {
        append_bits(bits, kiln::sum(a.t, axis));
        append_bits(bits, kiln::mean(d.t, axis));
        append_bits(bits, kiln::var(a.t, axis));
        append_bits(bits, kiln::logsumexp(d.t, axis));
        append_bits(bits, kiln::max(a.t * b.t, axis));
        append_bits(bits, kiln::argmax(a.t, axis));
      }
      append_bits(bits, kiln::sum(a.t));
      append_bits(bits, kiln::var(d.t));
      append_bits(bits, kiln::logsumexp(a.t));
      auto m2 = a.t.reshape({-1, W.back()});
      auto part = m2.slice(0, 0, 160).slice(1, 0, 150);  // at most [160, 150]
      append_bits(bits, kiln::matmul(part.t(), part));
      append_bits(bits, kiln::matmul(part.slice(1, 0, 150, 2), part.t().slice(0, 0, 150, 2)));
      return bits;
    };
    kiln::set_num_threads(1);
    const auto r1 = run();
    kiln::set_num_threads(2);
    const auto r2 = run();
    kiln::set_num_threads(3);
    const auto r3 = run();
    CHECK(r1.size() == r2.size());
    CHECK(r1 == r2);
    CHECK(r1 == r3);
  }
  kiln::set_num_threads(saved);
}

// --- NaN and infinities --------------------------------------------------------------------------

namespace {

double nan_max(double a, double b) { return std::isnan(a) || std::isnan(b) ? std::nan("") : std::max(a, b); }
double nan_min(double a, double b) { return std::isnan(a) || std::isnan(b) ? std::nan("") : std::min(a, b); }

template <class T>
void random_special(Gen& g, int cases, int& checked) {
  special_percent = 15;
  for (int c = 0; c < cases; ++c) {
    const Dims S = random_shape(g, 0, 3, 25);
    auto bshape = [&] { return broadcast_operand_shape(g, S); };
    auto a = make_random_operand<T>(g, bshape, 0, 3);
    auto b = make_random_operand<T>(g, bshape, 0, 3);
    auto x = make_random_operand<T>(g, [&] { return S; }, 0, 3);
    INFO("case " << c << "\n a = " << a.how << "\n b = " << b.how << "\n x = " << x.how);
    Dims out;
    REQUIRE(ref_broadcast(a.r.shape, b.r.shape, out));
    for (int which = 0; which < 3; ++which) {
      std::vector<double> want;
      for_each_index(out, [&](const Dims& ci, index_t) {
        const double p = ref_at_broadcast(a.r, out, ci), q = ref_at_broadcast(b.r, out, ci);
        switch (which) {
          case 0: want.push_back(nan_max(p, q) + nan_min(q, p * 2)); break;
          case 1: want.push_back(p > q ? (std::isnan(p) ? p : std::max(p, 0.0)) : (std::isnan(q) ? q : std::clamp(q, -1.0, 1.0))); break;
          default: want.push_back(p * q - q); break;
        }
      });
      Tensor<T> got = which == 0   ? Tensor<T>(kiln::maximum(a.t, b.t) + kiln::minimum(b.t, a.t * T(2)))
                      : which == 1 ? Tensor<T>(kiln::where(a.t > b.t, kiln::relu(a.t), kiln::clamp(b.t, -1, 1)))
                                   : Tensor<T>(a.t * b.t - b.t);
      const std::string m = compare(got, out, want, rtol<T>(), rtol<T>());
      CHECK_MESSAGE(m.empty(), "expression " << which << ": " << m);
    }
    // reductions along each axis: max/min/argmax/argmin propagate NaN, logsumexp handles +-inf
    const std::vector<double> xs = values(x.r);
    const Dims& W = x.r.shape;
    for (int axis = 0; axis < static_cast<int>(W.size()); ++axis) {
      const index_t R = W[static_cast<std::size_t>(axis)];
      if (R == 0) continue;
      Dims rest = W;
      rest[static_cast<std::size_t>(axis)] = 1;
      std::vector<double> wmax, wmin, wamax, wamin, wlse, wsum;
      for_each_index(rest, [&](const Dims& ci, index_t) {
        std::vector<double> along;
        Dims cc = ci;
        for (index_t r = 0; r < R; ++r) {
          cc[static_cast<std::size_t>(axis)] = r;
          along.push_back(xs[static_cast<std::size_t>(flat_index(W, cc))]);
        }
        double mx = along[0], mn = along[0], s = 0;
        index_t amx = 0, amn = 0, first_nan = -1;
        bool pinf = false, all_ninf = true;
        for (index_t r = 0; r < R; ++r) {
          const double v = along[static_cast<std::size_t>(r)];
          s += v;
          if (std::isnan(v) && first_nan < 0) first_nan = r;
          pinf = pinf || v == std::numeric_limits<double>::infinity();
          all_ninf = all_ninf && v == -std::numeric_limits<double>::infinity();
          if (v > mx) mx = v, amx = r;
          if (v < mn) mn = v, amn = r;
        }
        if (first_nan >= 0) {
          wmax.push_back(std::nan(""));
          wmin.push_back(std::nan(""));
          wamax.push_back(static_cast<double>(first_nan));
          wamin.push_back(static_cast<double>(first_nan));
          wlse.push_back(std::nan(""));
        } else {
          wmax.push_back(mx);
          wmin.push_back(mn);
          wamax.push_back(static_cast<double>(amx));
          wamin.push_back(static_cast<double>(amn));
          if (pinf) {
            wlse.push_back(std::numeric_limits<double>::infinity());
          } else if (all_ninf) {
            wlse.push_back(-std::numeric_limits<double>::infinity());
          } else {
            double e = 0;
            for (double v : along) e += std::exp(v - mx);
            wlse.push_back(mx + std::log(e));
          }
        }
        wsum.push_back(s);
      });
      Dims got_shape = W;
      got_shape.erase(got_shape.begin() + axis);
      auto idx_to_double = [](const Tensor<index_t>& t) {
        auto v = t.to_vector();
        std::vector<T> d(v.begin(), v.end());
        return kiln::from_vector(d, t.shape());
      };
      INFO("axis " << axis);
      std::string m;
      CHECK_MESSAGE((m = compare(kiln::max(x.t, axis), got_shape, wmax, 0, 0)).empty(), "max: " << m);
      CHECK_MESSAGE((m = compare(kiln::min(x.t, axis), got_shape, wmin, 0, 0)).empty(), "min: " << m);
      CHECK_MESSAGE((m = compare(idx_to_double(kiln::argmax(x.t, axis)), got_shape, wamax, 0, 0)).empty(), "argmax: " << m);
      CHECK_MESSAGE((m = compare(idx_to_double(kiln::argmin(x.t, axis)), got_shape, wamin, 0, 0)).empty(), "argmin: " << m);
      CHECK_MESSAGE((m = compare(kiln::logsumexp(x.t, axis), got_shape, wlse, rtol<T>(), rtol<T>())).empty(), "logsumexp: " << m);
      CHECK_MESSAGE((m = compare(kiln::sum(x.t, axis), got_shape, wsum, 1e-4, 1e-4)).empty(), "sum: " << m);
    }
    ++checked;
  }
  special_percent = 0;
}

}  // namespace

TEST_CASE("NaN and infinities through expressions and reductions of random views") {
  Gen g(404);
  int checked = 0;
  random_special<float>(g, 120, checked);
  random_special<double>(g, 60, checked);
  MESSAGE(checked << " cases with NaN/inf elements checked");
}
