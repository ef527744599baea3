// kiln/io/plot.hpp — line_plot: line charts as RGB images (frame, ticks at 1/2/5 x 10^k with labels,
// grid, linear or log y axis, polylines, legend, title and axis labels in a built-in 5x7 font).
// Builds on io/png.hpp (Image; save a plot with write_png) and core/error.hpp.
#pragma once

#include <kiln/core/error.hpp>
#include <kiln/io/png.hpp>  // Image

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::io {

using Rgb = std::array<std::uint8_t, 3>;

// The ten colours of the "tab10" cycle (matplotlib's default), repeating: a colour for series i.
inline Rgb plot_color(std::size_t i) {
  static constexpr Rgb palette[10] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                                      {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
                                      {188, 189, 34},  {23, 190, 207}};
  return palette[i % 10];
}

// One line of a plot: points (x[i], y[i]) joined in order. A point with a NaN or infinite
// coordinate (or y <= 0 on a log axis) is skipped and breaks the line; a point with no drawn
// neighbour is drawn as a single pixel. Series with an empty name stay out of the legend.
struct Series {
  std::string name;
  std::vector<double> x;
  std::vector<double> y;
  Rgb color{31, 119, 180};
};

struct PlotOptions {
  int width = 640;   // pixels, 160..16384
  int height = 400;  // pixels, 120..16384
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_y = false;  // y axis in decades (ticks at powers of ten)
};

// Tick values covering [lo, hi] at a "nice" step, the smallest of 1, 2, 5 x 10^k that is at least
// (hi - lo) / target_intervals: from floor(lo / step) step to ceil(hi / step) step. Ticks are
// k * step for integer k, so 0 is a tick whenever it lies in the range. lo == hi is widened
// first (by 1 around 0, else by 10% of |lo|). Throws ValueError for non-finite or reversed bounds.
inline std::vector<double> nice_ticks(double lo, double hi, int target_intervals = 5) {
  if (!std::isfinite(lo) || !std::isfinite(hi) || hi < lo || target_intervals < 1)
    throw_value_error("nice_ticks", "expected finite lo <= hi and target_intervals >= 1, got lo " +
                                        std::to_string(lo) + ", hi " + std::to_string(hi) + ", target_intervals " +
                                        std::to_string(target_intervals));
  if (hi == lo) {
    const double widen = lo == 0.0 ? 1.0 : std::fabs(lo) * 0.1;
    lo -= widen;
    hi += widen;
  }
  if (!std::isfinite(hi - lo))
    throw_value_error("nice_ticks", "the range from " + std::to_string(lo) + " to " + std::to_string(hi) +
                                        " is wider than a double can hold");
  const double raw = (hi - lo) / target_intervals;
  const double decade = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10.0 * decade;
  for (double m : {1.0, 2.0, 5.0})
    if (m * decade >= raw * (1.0 - 1e-9)) {
      step = m * decade;
      break;
    }
  // The small slack keeps a bound that is a multiple of the step up to rounding (1 / 0.2) exact.
  const double first = std::floor(lo / step + 1e-9);
  const double last = std::ceil(hi / step - 1e-9);
  // step >= (hi - lo) / target_intervals, so there are at most target_intervals + 2 intervals, and
  // at least one; rounding breaks that only when hi - lo is a few units in the last place of lo.
  const double intervals = last - first;
  if (!(intervals >= 1 && intervals <= target_intervals + 2))
    throw_value_error("nice_ticks", "the range from " + std::to_string(lo) + " to " + std::to_string(hi) +
                                        " is too narrow for the precision of its values");
  std::vector<double> ticks;
  for (int k = 0; k <= static_cast<int>(intervals); ++k) ticks.push_back((first + k) * step);
  return ticks;
}

// A tick label: `value` with as many decimals as `step` needs (0.2 -> "0.2", 1000 -> "1000"),
// or in exponent form ("2.5e-05", "1.2e+06") when that would take more than 4 decimals or the
// value reaches a million. Values within a billionth of a step of 0 print as 0 (never "-0.0").
inline std::string format_tick(double value, double step) {
  step = std::fabs(step);
  if (std::fabs(value) < step * 1e-9) value = 0.0;
  const int decimals = step > 0 ? std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9))) : 0;
  char text[48];
  if (decimals > 4 || std::fabs(value) >= 1e6) std::snprintf(text, sizeof text, "%.3g", value);
  else std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

namespace detail {

// --- the bitmap font ----------------------------------------------------------------------------
// Each glyph is 5 columns by 8 rows, '#' for ink: rows 0-6 hold capitals and digits (baseline
// under row 6), row 7 the descenders of g, j, p, q, y and the comma. Characters advance 6 pixels.
struct Glyph {
  char character;
  const char* rows[8];
};

inline constexpr int glyph_width = 5;
inline constexpr int glyph_height = 8;
inline constexpr int glyph_advance = 6;

// clang-format off
inline constexpr Glyph font_glyphs[] = {
  {' ', {"     ", "     ", "     ", "     ", "     ", "     ", "     ", "     "}},
  {'0', {" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ", "     "}},
  {'1', {"  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ", "     "}},
  {'2', {" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####", "     "}},
  {'3', {"#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ", "     "}},
  {'4', {"   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ", "     "}},
  {'5', {"#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ", "     "}},
  {'6', {"  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ", "     "}},
  {'7', {"#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ", "     "}},
  {'8', {" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ", "     "}},
  {'9', {" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ", "     "}},
  {'A', {" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #", "     "}},
  {'B', {"#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### ", "     "}},
  {'C', {" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### ", "     "}},
  {'D', {"###  ", "#  # ", "#   #", "#   #", "#   #", "#  # ", "###  ", "     "}},
  {'E', {"#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####", "     "}},
  {'F', {"#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    ", "     "}},
  {'G', {" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####", "     "}},
  {'H', {"#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #", "     "}},
  {'I', {" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ", "     "}},
  {'J', {"  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  ", "     "}},
  {'K', {"#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #", "     "}},
  {'L', {"#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####", "     "}},
  {'M', {"#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #", "     "}},
  {'N', {"#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #", "     "}},
  {'O', {" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ", "     "}},
  {'P', {"#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    ", "     "}},
  {'Q', {" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #", "     "}},
  {'R', {"#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #", "     "}},
  {'S', {" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### ", "     "}},
  {'T', {"#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "     "}},
  {'U', {"#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ", "     "}},
  {'V', {"#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  ", "     "}},
  {'W', {"#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # ", "     "}},
  {'X', {"#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #", "     "}},
  {'Y', {"#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  ", "     "}},
  {'Z', {"#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####", "     "}},
  {'a', {"     ", "     ", " ### ", "    #", " ####", "#   #", " ####", "     "}},
  {'b', {"#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#### ", "     "}},
  {'c', {"     ", "     ", " ### ", "#    ", "#    ", "#   #", " ### ", "     "}},
  {'d', {"    #", "    #", " ## #", "#  ##", "#   #", "#   #", " ####", "     "}},
  {'e', {"     ", "     ", " ### ", "#   #", "#####", "#    ", " ### ", "     "}},
  {'f', {"  ## ", " #  #", " #   ", "###  ", " #   ", " #   ", " #   ", "     "}},
  {'g', {"     ", "     ", " ####", "#   #", "#   #", " ####", "    #", " ### "}},
  {'h', {"#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#   #", "     "}},
  {'i', {"  #  ", "     ", " ##  ", "  #  ", "  #  ", "  #  ", " ### ", "     "}},
  {'j', {"   # ", "     ", "  ## ", "   # ", "   # ", "   # ", "#  # ", " ##  "}},
  {'k', {"#    ", "#    ", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "     "}},
  {'l', {" ##  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ", "     "}},
  {'m', {"     ", "     ", "## # ", "# # #", "# # #", "#   #", "#   #", "     "}},
  {'n', {"     ", "     ", "# ## ", "##  #", "#   #", "#   #", "#   #", "     "}},
  {'o', {"     ", "     ", " ### ", "#   #", "#   #", "#   #", " ### ", "     "}},
  {'p', {"     ", "     ", "#### ", "#   #", "#   #", "#### ", "#    ", "#    "}},
  {'q', {"     ", "     ", " ####", "#   #", "#   #", " ####", "    #", "    #"}},
  {'r', {"     ", "     ", "# ## ", "##  #", "#    ", "#    ", "#    ", "     "}},
  {'s', {"     ", "     ", " ####", "#    ", " ### ", "    #", "#### ", "     "}},
  {'t', {" #   ", " #   ", "###  ", " #   ", " #   ", " #  #", "  ## ", "     "}},
  {'u', {"     ", "     ", "#   #", "#   #", "#   #", "#  ##", " ## #", "     "}},
  {'v', {"     ", "     ", "#   #", "#   #", "#   #", " # # ", "  #  ", "     "}},
  {'w', {"     ", "     ", "#   #", "#   #", "# # #", "# # #", " # # ", "     "}},
  {'x', {"     ", "     ", "#   #", " # # ", "  #  ", " # # ", "#   #", "     "}},
  {'y', {"     ", "     ", "#   #", "#   #", "#   #", " ####", "    #", " ### "}},
  {'z', {"     ", "     ", "#####", "   # ", "  #  ", " #   ", "#####", "     "}},
  {'.', {"     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ", "     "}},
  {',', {"     ", "     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   "}},
  {':', {"     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     ", "     "}},
  {'-', {"     ", "     ", "     ", " ### ", "     ", "     ", "     ", "     "}},
  {'+', {"     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     ", "     "}},
  {'=', {"     ", "     ", "#####", "     ", "#####", "     ", "     ", "     "}},
  {'_', {"     ", "     ", "     ", "     ", "     ", "     ", "     ", "#####"}},
  {'%', {"##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##", "     "}},
  {'/', {"     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     ", "     "}},
  {'(', {"   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # ", "     "}},
  {')', {" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   ", "     "}},
  {'[', {" ### ", " #   ", " #   ", " #   ", " #   ", " #   ", " ### ", "     "}},
  {']', {" ### ", "   # ", "   # ", "   # ", "   # ", "   # ", " ### ", "     "}},
  {'*', {"     ", "  #  ", "# # #", " ### ", "# # #", "  #  ", "     ", "     "}},
  {'\'', {"  #  ", "  #  ", " #   ", "     ", "     ", "     ", "     ", "     "}},
  {'?', {" ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  ", "     "}},
};
// clang-format on

// The glyph of `c`; characters the font lacks are drawn as '?'.
inline const Glyph& font_glyph(char c) {
  const Glyph* fallback = nullptr;
  for (const Glyph& g : font_glyphs) {
    if (g.character == c) return g;
    if (g.character == '?') fallback = &g;
  }
  return *fallback;
}

// Width in pixels of `text` drawn at `scale`.
inline int text_width(std::string_view text, int scale = 1) {
  return text.empty() ? 0 : (static_cast<int>(text.size()) * glyph_advance - 1) * scale;
}

// --- drawing on an RGB image; everything outside the image is clipped ---------------------------

inline void put_pixel(Image& image, int x, int y, const Rgb& color) {
  if (x < 0 || y < 0 || x >= image.width || y >= image.height) return;
  std::uint8_t* p = image.pixels.data() + (std::size_t(y) * std::size_t(image.width) + std::size_t(x)) * 3;
  p[0] = color[0];
  p[1] = color[1];
  p[2] = color[2];
}

// Fills the rectangle with corners (x0, y0) and (x1, y1), both included.
inline void fill_rect(Image& image, int x0, int y0, int x1, int y1, const Rgb& color) {
  for (int y = std::max(y0, 0); y <= std::min(y1, image.height - 1); ++y)
    for (int x = std::max(x0, 0); x <= std::min(x1, image.width - 1); ++x) put_pixel(image, x, y, color);
}

// The rectangle outline with corners (x0, y0) and (x1, y1).
inline void frame_rect(Image& image, int x0, int y0, int x1, int y1, const Rgb& color) {
  fill_rect(image, x0, y0, x1, y0, color);
  fill_rect(image, x0, y1, x1, y1, color);
  fill_rect(image, x0, y0, x0, y1, color);
  fill_rect(image, x1, y0, x1, y1, color);
}

// A clipping rectangle, corners included.
struct ClipRect {
  int x0, y0, x1, y1;
  bool contains(int x, int y) const { return x >= x0 && x <= x1 && y >= y0 && y <= y1; }
};

// Bresenham's line from (x0, y0) to (x1, y1), both ends included, pixels outside `clip` skipped.
// The error term e = dx - dy (in doubled units) decides at each step whether x, y or both advance.
inline void draw_line(Image& image, int x0, int y0, int x1, int y1, const Rgb& color, const ClipRect& clip) {
  const long long dx = x1 > x0 ? x1 - x0 : x0 - x1;
  const long long dy = y1 > y0 ? y1 - y0 : y0 - y1;
  const int sx = x0 < x1 ? 1 : -1;
  const int sy = y0 < y1 ? 1 : -1;
  long long error = dx - dy;
  for (;;) {
    if (clip.contains(x0, y0)) put_pixel(image, x0, y0, color);
    if (x0 == x1 && y0 == y1) break;
    const long long twice = 2 * error;
    if (twice > -dy) {
      error -= dy;
      x0 += sx;
    }
    if (twice < dx) {
      error += dx;
      y0 += sy;
    }
  }
}

// Draws `text` with its top-left corner at (x, y), each font pixel a scale x scale square.
inline void draw_text(Image& image, int x, int y, std::string_view text, const Rgb& color, int scale = 1) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const Glyph& g = font_glyph(text[i]);
    const int gx = x + static_cast<int>(i) * glyph_advance * scale;
    for (int r = 0; r < glyph_height; ++r)
      for (int c = 0; c < glyph_width; ++c)
        if (g.rows[r][c] == '#') fill_rect(image, gx + c * scale, y + r * scale, gx + c * scale + scale - 1,
                                           y + r * scale + scale - 1, color);
  }
}

// Draws `text` turned a quarter turn counter-clockwise (reading upwards): the glyphs' tops face
// left, column x; the first character ends at row y and the text runs up from there.
inline void draw_text_upwards(Image& image, int x, int y, std::string_view text, const Rgb& color) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const Glyph& g = font_glyph(text[i]);
    const int along = static_cast<int>(i) * glyph_advance;
    for (int r = 0; r < glyph_height; ++r)
      for (int c = 0; c < glyph_width; ++c)
        if (g.rows[r][c] == '#') put_pixel(image, x + r, y - (along + c), color);
  }
}

inline int round_to_pixel(double v) {
  if (!(v == v)) return -1000000;  // NaN: far outside any image
  v = std::clamp(v, -1e6, 1e6);
  return static_cast<int>(std::floor(v + 0.5));
}

inline bool plottable(double x, double y, bool log_y) {
  return std::isfinite(x) && std::isfinite(y) && (!log_y || y > 0.0);
}

// Ticks at powers of ten (every `step` decades, step in 1, 2, 5, 10, 20, ...) covering
// [10^lo_exponent, 10^hi_exponent]; returns the exponents of the first and last tick.
inline std::vector<double> decade_ticks(double lo_exponent, double hi_exponent, int target_intervals,
                                        double& first, double& last) {
  double a = std::floor(lo_exponent + 1e-9);
  double b = std::ceil(hi_exponent - 1e-9);
  if (b <= a) b = a + 1;
  double step = 1;
  for (double decade = 1;; decade *= 10) {
    bool found = false;
    for (double m : {1.0, 2.0, 5.0}) {
      step = m * decade;
      if (std::ceil(b / step) - std::floor(a / step) <= target_intervals) {
        found = true;
        break;
      }
    }
    if (found) break;
  }
  first = std::floor(a / step) * step;
  last = std::ceil(b / step) * step;
  std::vector<double> ticks;
  for (double e = first; e <= last + 1e-9; e += step) ticks.push_back(std::pow(10.0, e));
  return ticks;
}

inline constexpr int tick_length = 4;
inline constexpr int label_gap = 4;
inline constexpr int line_height = glyph_height + 3;

}  // namespace detail

// Where line_plot puts things: the data area's frame (inclusive pixel coordinates; x_min maps to
// column `left`, x_max to `right`, y_min to row `bottom`, y_max to `top`), the axis ranges (on a
// log axis y_min and y_max are log10 of the values), and the ticks with their labels.
struct PlotLayout {
  int left = 0, top = 0, right = 0, bottom = 0;
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  bool log_y = false;
  std::vector<double> x_ticks, y_ticks;  // in data units (10^k on a log axis)
  std::vector<std::string> x_labels, y_labels;
};

// Column of x: left + round((x - x_min) / (x_max - x_min) (right - left)).
inline int plot_column(const PlotLayout& layout, double x) {
  return layout.left +
         detail::round_to_pixel((x - layout.x_min) / (layout.x_max - layout.x_min) * (layout.right - layout.left));
}

// Row of y: bottom - round((v - y_min) / (y_max - y_min) (bottom - top)), v = y or log10(y).
inline int plot_row(const PlotLayout& layout, double y) {
  const double v = layout.log_y ? std::log10(y) : y;
  return layout.bottom -
         detail::round_to_pixel((v - layout.y_min) / (layout.y_max - layout.y_min) * (layout.bottom - layout.top));
}

// The layout line_plot uses for `series` and `options`: axis ranges from the plottable points,
// widened to the outermost ticks; margins sized to the title, labels and tick labels. Throws
// ValueError for an empty list, a series without points or with x and y of different lengths,
// no plottable point at all, or a size outside 160..16384 x 120..16384.
inline PlotLayout plot_layout(const std::vector<Series>& series, const PlotOptions& options) {
  const char* op = "line_plot";
  using namespace detail;
  if (options.width < 160 || options.height < 120 || options.width > 16384 || options.height > 16384)
    throw_value_error(op, "the plot size must be 160..16384 x 120..16384 pixels, got " +
                              std::to_string(options.width) + " x " + std::to_string(options.height));
  if (series.empty()) throw_value_error(op, "no series to plot");
  constexpr double infinity = std::numeric_limits<double>::infinity();
  double x_lo = infinity, x_hi = -infinity, y_lo = infinity, y_hi = -infinity;
  for (std::size_t s = 0; s < series.size(); ++s) {
    const Series& one = series[s];
    const std::string which = "series " + std::to_string(s) + " ('" + one.name + "')";
    if (one.x.size() != one.y.size())
      throw_value_error(op, which + " has " + std::to_string(one.x.size()) + " x values and " +
                                std::to_string(one.y.size()) + " y values");
    if (one.x.empty()) throw_value_error(op, which + " has no points");
    for (std::size_t i = 0; i < one.x.size(); ++i) {
      if (!plottable(one.x[i], one.y[i], options.log_y)) continue;
      x_lo = std::min(x_lo, one.x[i]);
      x_hi = std::max(x_hi, one.x[i]);
      y_lo = std::min(y_lo, one.y[i]);
      y_hi = std::max(y_hi, one.y[i]);
    }
  }
  if (!(x_lo <= x_hi))
    throw_value_error(op, options.log_y ? "no point has a finite x and a finite positive y (log_y)"
                                        : "no point has finite x and y");

  PlotLayout layout;
  layout.log_y = options.log_y;
  const int width = options.width, height = options.height;
  layout.top = 10 + (options.title.empty() ? 0 : 2 * 7 + 10);
  layout.bottom = height - 1 -
                  (tick_length + label_gap + 7 + (options.x_label.empty() ? 0 : label_gap + 2 + 7) + 10);

  const int y_target = std::clamp((layout.bottom - layout.top) / 50, 2, 8);
  if (options.log_y) {
    layout.y_ticks = decade_ticks(std::log10(y_lo), std::log10(y_hi), y_target, layout.y_min, layout.y_max);
    for (double t : layout.y_ticks) {
      char text[32];
      std::snprintf(text, sizeof text, "%g", t);
      layout.y_labels.push_back(text);
    }
  } else {
    layout.y_ticks = nice_ticks(y_lo, y_hi, y_target);
    layout.y_min = layout.y_ticks.front();
    layout.y_max = layout.y_ticks.back();
    const double step = layout.y_ticks[1] - layout.y_ticks[0];
    for (double t : layout.y_ticks) layout.y_labels.push_back(format_tick(t, step));
  }
  int widest = 0;
  for (const std::string& label : layout.y_labels) widest = std::max(widest, text_width(label));
  layout.left = 8 + (options.y_label.empty() ? 0 : glyph_height + 6) + widest + label_gap + tick_length;

  // x ticks depend on the data area's width, and its right margin on the last label: settle both.
  int right_margin = 16;
  for (int pass = 0; pass < 2; ++pass) {
    layout.right = width - 1 - right_margin;
    const int x_target = std::clamp((layout.right - layout.left) / 80, 2, 10);
    layout.x_ticks = nice_ticks(x_lo, x_hi, x_target);
    layout.x_labels.clear();
    const double step = layout.x_ticks[1] - layout.x_ticks[0];
    for (double t : layout.x_ticks) layout.x_labels.push_back(format_tick(t, step));
    right_margin = std::max(16, text_width(layout.x_labels.back()) / 2 + 6);
  }
  layout.x_min = layout.x_ticks.front();
  layout.x_max = layout.x_ticks.back();
  if (layout.right - layout.left < 40 || layout.bottom - layout.top < 30)
    throw_value_error(op, "a plot of " + std::to_string(width) + " x " + std::to_string(height) +
                              " pixels leaves no room for the data next to its labels");
  return layout;
}

// A line chart of `series` as an RGB image (write it with write_png): white background, light grid
// at the ticks, black frame with outward ticks and labels, each series a 1-pixel polyline in its
// colour (Bresenham), a legend of the named series in the top-right corner, the title (double
// size) above, x_label below and y_label reading upwards on the left. See plot_layout for errors.
inline Image line_plot(const std::vector<Series>& series, const PlotOptions& options = {}) {
  using namespace detail;
  const PlotLayout layout = plot_layout(series, options);
  const Rgb white{255, 255, 255}, black{0, 0, 0}, grid{225, 225, 225}, legend_border{160, 160, 160};
  Image image;
  image.width = options.width;
  image.height = options.height;
  image.channels = 3;
  image.pixels.assign(std::size_t(image.width) * std::size_t(image.height) * 3, 255);
  const int left = layout.left, right = layout.right, top = layout.top, bottom = layout.bottom;

  // Grid, frame, ticks and their labels.
  for (double t : layout.x_ticks) {
    const int x = plot_column(layout, t);
    if (x > left && x < right) fill_rect(image, x, top + 1, x, bottom - 1, grid);
  }
  for (double t : layout.y_ticks) {
    const int y = plot_row(layout, t);
    if (y > top && y < bottom) fill_rect(image, left + 1, y, right - 1, y, grid);
  }
  frame_rect(image, left, top, right, bottom, black);
  for (std::size_t i = 0; i < layout.x_ticks.size(); ++i) {
    const int x = plot_column(layout, layout.x_ticks[i]);
    fill_rect(image, x, bottom + 1, x, bottom + tick_length, black);
    const std::string& label = layout.x_labels[i];
    draw_text(image, x - text_width(label) / 2, bottom + tick_length + label_gap, label, black);
  }
  for (std::size_t i = 0; i < layout.y_ticks.size(); ++i) {
    const int y = plot_row(layout, layout.y_ticks[i]);
    fill_rect(image, left - tick_length, y, left - 1, y, black);
    const std::string& label = layout.y_labels[i];
    draw_text(image, left - tick_length - label_gap - text_width(label), y - 3, label, black);
  }

  // The series.
  const ClipRect area{left, top, right, bottom};
  for (const Series& s : series) {
    const std::size_t n = s.x.size();
    for (std::size_t i = 0; i < n; ++i) {
      if (!plottable(s.x[i], s.y[i], layout.log_y)) continue;
      const int x = plot_column(layout, s.x[i]);
      const int y = plot_row(layout, s.y[i]);
      const bool has_next = i + 1 < n && plottable(s.x[i + 1], s.y[i + 1], layout.log_y);
      const bool has_previous = i > 0 && plottable(s.x[i - 1], s.y[i - 1], layout.log_y);
      if (has_next) {
        draw_line(image, x, y, plot_column(layout, s.x[i + 1]), plot_row(layout, s.y[i + 1]), s.color, area);
      } else if (!has_previous && area.contains(x, y)) {
        put_pixel(image, x, y, s.color);
      }
    }
  }

  // The legend: a short line in each named series' colour, then its name.
  int named = 0, widest = 0;
  for (const Series& s : series)
    if (!s.name.empty()) {
      ++named;
      widest = std::max(widest, text_width(s.name));
    }
  if (named > 0) {
    const int box_width = 6 + 18 + 5 + widest + 6;
    const int box_height = 4 + named * line_height + 1;
    const int x1 = right - 6, x0 = x1 - box_width + 1, y0 = top + 6, y1 = y0 + box_height - 1;
    fill_rect(image, x0, y0, x1, y1, white);
    frame_rect(image, x0, y0, x1, y1, legend_border);
    int row = y0 + 4;
    for (const Series& s : series) {
      if (s.name.empty()) continue;
      fill_rect(image, x0 + 6, row + 3, x0 + 6 + 17, row + 4, s.color);
      draw_text(image, x0 + 6 + 18 + 5, row, s.name, black);
      row += line_height;
    }
  }

  // Title, axis labels.
  if (!options.title.empty())
    draw_text(image, (image.width - text_width(options.title, 2)) / 2, 8, options.title, black, 2);
  if (!options.x_label.empty())
    draw_text(image, (left + right) / 2 - text_width(options.x_label) / 2,
              bottom + tick_length + label_gap + 7 + label_gap + 2, options.x_label, black);
  if (!options.y_label.empty())
    draw_text_upwards(image, 8, (top + bottom) / 2 + text_width(options.y_label) / 2, options.y_label, black);
  return image;
}

}  // namespace kiln::io
