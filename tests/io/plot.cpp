// Tests of include/kiln/io/plot.hpp: nice tick values and labels worked out by hand, the layout
// of a known plot (margins, axis ranges) and the pixels its series land on, Bresenham lines,
// broken lines at NaN, log axes, title/legend placement, the font table, and argument errors.
#include <doctest/doctest.h>
#include <kiln/io/plot.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace {

using kiln::io::Rgb;

Rgb pixel(const kiln::io::Image& image, int x, int y) {
  REQUIRE(x >= 0);
  REQUIRE(y >= 0);
  REQUIRE(x < image.width);
  REQUIRE(y < image.height);
  const std::size_t i = (std::size_t(y) * image.width + x) * 3;
  return {image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]};
}

void check_ticks(const std::vector<double>& got, const std::vector<double>& expected) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(expected[i]).epsilon(1e-12));
}

template <class F>
std::string value_error_of(F&& f) {
  try {
    f();
  } catch (const kiln::ValueError& e) {
    return e.what();
  }
  return "";
}

constexpr double not_a_number = std::numeric_limits<double>::quiet_NaN();

}  // namespace

TEST_CASE("nice_ticks: the smallest 1, 2, 5 x 10^k step at least (hi - lo) / target") {
  // [0, 1] / 5 = 0.2 -> step 0.2, from 0 to 1.
  check_ticks(kiln::io::nice_ticks(0, 1), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
  // 0.857 / 5 = 0.1714 -> 0.2; floor(0.013 / 0.2) = 0, ceil(0.87 / 0.2) = ceil(4.35) = 5.
  check_ticks(kiln::io::nice_ticks(0.013, 0.87), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
  // 15.8 / 5 = 3.16 -> 5; floor(-0.74) = -1, ceil(2.42) = 3.
  check_ticks(kiln::io::nice_ticks(-3.7, 12.1), {-5, 0, 5, 10, 15});
  // 4444 / 5 = 888.8 -> 1000 (5 x 100 is too small); floor(1.234) = 1, ceil(5.678) = 6.
  check_ticks(kiln::io::nice_ticks(1234, 5678), {1000, 2000, 3000, 4000, 5000, 6000});
  // 100 / 4 = 25 -> 50.
  check_ticks(kiln::io::nice_ticks(0, 100, 4), {0, 50, 100});
  // A single value is widened by 10% of itself: [4.5, 5.5] -> step 0.2, 4.4 .. 5.6.
  check_ticks(kiln::io::nice_ticks(5, 5), {4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6});
  // ... and 0 by 1: [-1, 1] -> 0.4 -> step 0.5.
  check_ticks(kiln::io::nice_ticks(0, 0), {-1, -0.5, 0, 0.5, 1});
  // Small values: 0.00042 / 5 = 8.4e-5 -> 1e-4.
  check_ticks(kiln::io::nice_ticks(0.0001, 0.00052), {0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006});

  CHECK(!value_error_of([] { kiln::io::nice_ticks(1, 0); }).empty());
  CHECK(!value_error_of([] { kiln::io::nice_ticks(0, not_a_number); }).empty());
  CHECK(!value_error_of([] { kiln::io::nice_ticks(-1e308, 1e308); }).empty());
}

TEST_CASE("format_tick: as many decimals as the step needs") {
  CHECK(kiln::io::format_tick(3 * 0.2, 0.2) == "0.6");  // 0.6000000000000001
  CHECK(kiln::io::format_tick(1000, 1000) == "1000");
  CHECK(kiln::io::format_tick(-0.5, 0.5) == "-0.5");
  CHECK(kiln::io::format_tick(-1e-17, 0.2) == "0.0");  // never "-0.0"
  CHECK(kiln::io::format_tick(0.05, 0.05) == "0.05");
  CHECK(kiln::io::format_tick(2.5e-5, 5e-6) == "2.5e-05");
  CHECK(kiln::io::format_tick(1.2e6, 2e5) == "1.2e+06");
}

TEST_CASE("the font covers digits, letters and the punctuation of numbers and labels") {
  const std::string required = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-e+%/ ";
  std::set<char> characters;
  std::set<std::string> bitmaps;
  for (const auto& g : kiln::io::detail::font_glyphs) {
    CHECK_MESSAGE(characters.insert(g.character).second, "glyph '" << g.character << "' defined twice");
    std::string bitmap;
    for (const char* row : g.rows) {
      CHECK(std::string(row).size() == 5);
      CHECK(std::string(row).find_first_not_of(" #") == std::string::npos);
      bitmap += row;
    }
    CHECK_MESSAGE(bitmaps.insert(bitmap).second, "glyph '" << g.character << "' repeats another's bitmap");
    // Only descenders reach the last row.
    const bool descender = std::string("gjpqy,_").find(g.character) != std::string::npos;
    CHECK_MESSAGE((std::string(g.rows[7]) != "     ") == descender, "glyph '" << g.character << "'");
    if (g.character != ' ') CHECK(bitmap.find('#') != std::string::npos);
  }
  for (char c : required) CHECK_MESSAGE(characters.count(c) == 1, "missing glyph '" << c << "'");
  CHECK(kiln::io::detail::font_glyph('~').character == '?');
  CHECK(kiln::io::detail::text_width("0.25") == 23);  // 4 x 6 - 1
  CHECK(kiln::io::detail::text_width("Loss", 2) == 46);
}

TEST_CASE("Bresenham's line") {
  kiln::io::Image image{5, 3, 3, std::vector<std::uint8_t>(5 * 3 * 3, 0)};
  const Rgb on{1, 2, 3};
  kiln::io::detail::draw_line(image, 0, 0, 4, 2, on, {0, 0, 4, 2});
  // dx = 4, dy = 2: error starts at 2; x advances every step, y when the doubled error drops
  // below dx: (0,0) (1,0) (2,1) (3,1) (4,2).
  std::set<std::pair<int, int>> drawn;
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 5; ++x)
      if (pixel(image, x, y) == on) drawn.insert({x, y});
  CHECK(drawn == std::set<std::pair<int, int>>{{0, 0}, {1, 0}, {2, 1}, {3, 1}, {4, 2}});
  // Clipping: nothing outside the rectangle, even when the ends are far outside the image.
  kiln::io::Image clipped{5, 3, 3, std::vector<std::uint8_t>(5 * 3 * 3, 0)};
  kiln::io::detail::draw_line(clipped, -100, 1, 100, 1, on, {1, 0, 3, 2});
  for (int x = 0; x < 5; ++x) CHECK((pixel(clipped, x, 1) == on) == (x >= 1 && x <= 3));
}

TEST_CASE("series points land where the mapping formula puts them") {
  kiln::io::Series line{"", {0, 2.5, 5, 7.5, 10}, {0, 2.5, 5, 7.5, 10}, {200, 20, 20}};
  const std::vector<kiln::io::Series> series{line};
  const kiln::io::PlotOptions options;  // 640 x 400, no title or labels
  const kiln::io::PlotLayout layout = kiln::io::plot_layout(series, options);
  // By hand: top = 10; bottom = 399 - (tick 4 + gap 4 + digits 7 + margin 10) = 374. The data
  // area is 364 rows high, 364 / 50 -> 7 intervals wanted: 10 / 7 = 1.43 -> step 2, ticks
  // 0, 2, .., 10. The widest label "10" is 11 pixels: left = 8 + 11 + 4 + 4 = 27; right = 639 - 16.
  CHECK(layout.top == 10);
  CHECK(layout.bottom == 374);
  CHECK(layout.left == 27);
  CHECK(layout.right == 623);
  CHECK(layout.x_min == 0);
  CHECK(layout.x_max == 10);
  CHECK(layout.y_min == 0);
  CHECK(layout.y_max == 10);
  check_ticks(layout.y_ticks, {0, 2, 4, 6, 8, 10});
  CHECK(layout.y_labels == std::vector<std::string>{"0", "2", "4", "6", "8", "10"});
  CHECK(layout.x_labels == std::vector<std::string>{"0", "2", "4", "6", "8", "10"});

  // column = 27 + round(x / 10 * 596), row = 374 - round(y / 10 * 364).
  CHECK(kiln::io::plot_column(layout, 5) == 325);
  CHECK(kiln::io::plot_row(layout, 5) == 192);
  CHECK(kiln::io::plot_column(layout, 2.5) == 176);
  CHECK(kiln::io::plot_row(layout, 2.5) == 283);

  const kiln::io::Image image = kiln::io::line_plot(series, options);
  CHECK(image.width == 640);
  CHECK(image.height == 400);
  CHECK(image.channels == 3);
  const Rgb red{200, 20, 20};
  CHECK(pixel(image, 325, 192) == red);
  CHECK(pixel(image, 176, 283) == red);
  CHECK(pixel(image, 27, 374) == red);   // (0, 0) on the frame's corner: series drawn over it
  CHECK(pixel(image, 623, 10) == red);   // (10, 10)
  CHECK(pixel(image, 325, 200) == Rgb{255, 255, 255});
  CHECK(pixel(image, 27, 200) == Rgb{0, 0, 0});  // the frame
  // Between (2.5, 2.5) and (5, 5) the segment runs from (176, 283) to (325, 192): one pixel per
  // column (more columns than rows), each within half a pixel of the exact line.
  for (int x = 177; x < 325; ++x) {
    int count = 0, row = -1;
    for (int y = layout.top; y <= layout.bottom; ++y)
      if (pixel(image, x, y) == red) {
        ++count;
        row = y;
      }
    CHECK(count == 1);
    const double exact = 283.0 + (x - 176) * (192.0 - 283.0) / (325.0 - 176.0);
    CHECK(std::fabs(row - exact) <= 0.5);
  }
  // Grid lines at the ticks (light gray), outward tick marks (black) below the frame.
  CHECK(pixel(image, kiln::io::plot_column(layout, 4), 100) == Rgb{225, 225, 225});
  CHECK(pixel(image, kiln::io::plot_column(layout, 4), 375) == Rgb{0, 0, 0});
  CHECK(pixel(image, kiln::io::plot_column(layout, 4), 378) == Rgb{0, 0, 0});
}

TEST_CASE("NaN and infinite points break the line; a lone point is one pixel") {
  const Rgb blue{0, 0, 255};
  const kiln::io::Series broken{"", {0, 1, 2, 3, 4}, {0, 1, not_a_number, 3, 4}, blue};
  const kiln::io::PlotLayout layout = kiln::io::plot_layout({broken}, {});
  // Ranges [0, 4]: 4 / 7 = 0.57 -> step 1. Labels 0..4 are 5 pixels wide: left = 8 + 5 + 8 = 21.
  CHECK(layout.left == 21);
  CHECK(layout.x_max == 4);
  CHECK(layout.y_max == 4);
  const kiln::io::Image image = kiln::io::line_plot({broken}, {});
  const int gap_column = kiln::io::plot_column(layout, 2);  // 21 + round(2 / 4 * 602) = 322
  CHECK(gap_column == 322);
  for (int y = layout.top; y <= layout.bottom; ++y) CHECK(pixel(image, gap_column, y) != blue);
  CHECK(pixel(image, kiln::io::plot_column(layout, 1), kiln::io::plot_row(layout, 1)) == blue);
  CHECK(pixel(image, kiln::io::plot_column(layout, 3), kiln::io::plot_row(layout, 3)) == blue);

  const double inf = std::numeric_limits<double>::infinity();
  const kiln::io::Series lone{"", {0, 1, 2, 3, 4}, {0, inf, 2, not_a_number, 4}, blue};
  const kiln::io::Image dots = kiln::io::line_plot({lone}, {});
  const int x = kiln::io::plot_column(layout, 2), y = kiln::io::plot_row(layout, 2);
  CHECK(pixel(dots, x, y) == blue);
  for (int dx = -3; dx <= 3; ++dx)
    for (int dy = -3; dy <= 3; ++dy)
      if (dx || dy) CHECK(pixel(dots, x + dx, y + dy) != blue);
}

TEST_CASE("log_y: decades as ticks, straight lines for exponentials") {
  const Rgb green{0, 150, 0};
  const kiln::io::Series growth{"", {0, 1, 2, 3}, {1, 10, 100, 1000}, green};
  kiln::io::PlotOptions options;
  options.log_y = true;
  const kiln::io::PlotLayout layout = kiln::io::plot_layout({growth}, options);
  CHECK(layout.y_min == 0);
  CHECK(layout.y_max == 3);
  check_ticks(layout.y_ticks, {1, 10, 100, 1000});
  CHECK(layout.y_labels == std::vector<std::string>{"1", "10", "100", "1000"});
  // row = 374 - round(log10(y) / 3 * 364): 10 -> 374 - 121 = 253.
  CHECK(kiln::io::plot_row(layout, 10) == 253);
  const kiln::io::Image image = kiln::io::line_plot({growth}, options);
  CHECK(pixel(image, kiln::io::plot_column(layout, 1), 253) == green);
  // In log space the points are collinear: every drawn pixel is within a pixel of one line.
  const double x0 = kiln::io::plot_column(layout, 0), y0 = kiln::io::plot_row(layout, 1);
  const double x1 = kiln::io::plot_column(layout, 3), y1 = kiln::io::plot_row(layout, 1000);
  int drawn = 0;
  for (int y = layout.top; y <= layout.bottom; ++y)
    for (int x = layout.left; x <= layout.right; ++x)
      if (pixel(image, x, y) == green) {
        ++drawn;
        CHECK(std::fabs(y - (y0 + (x - x0) * (y1 - y0) / (x1 - x0))) <= 1.0);
      }
  CHECK(drawn >= x1 - x0);

  // Values between 0.03 and 0.5: decades 10^-2 .. 10^0. Non-positive values are skipped.
  const kiln::io::Series loss{"", {0, 1, 2, 3}, {0.5, 0.1, -1, 0.03}, green};
  const kiln::io::PlotLayout small = kiln::io::plot_layout({loss}, options);
  CHECK(small.y_labels == std::vector<std::string>{"0.01", "0.1", "1"});
  CHECK(small.y_min == -2);
  CHECK(small.y_max == 0);
}

TEST_CASE("title, axis labels and legend take their places") {
  const Rgb teal{0, 128, 128};
  kiln::io::Series flat{"train", {0, 1}, {0, 0}, teal};
  kiln::io::PlotOptions options;
  options.title = "T";
  const kiln::io::PlotLayout layout = kiln::io::plot_layout({flat}, options);
  CHECK(layout.top == 34);  // 10 + 2 x 7 + 10
  const kiln::io::Image image = kiln::io::line_plot({flat}, options);
  // "T" at double size, centred: x from (640 - 10) / 2 = 315; its top row "#####" fills rows 8-9,
  // its second row "  #  " only columns 319-320.
  for (int x = 315; x <= 324; ++x) CHECK(pixel(image, x, 8) == Rgb{0, 0, 0});
  CHECK(pixel(image, 315, 10) == Rgb{255, 255, 255});
  CHECK(pixel(image, 319, 10) == Rgb{0, 0, 0});
  CHECK(pixel(image, 314, 8) == Rgb{255, 255, 255});

  // Legend: box right edge at right - 6, width 6 + 18 + 5 + 29 ("train") + 6 = 64, top at top + 6;
  // the colour sample spans 18 columns from x0 + 6, rows top + 6 + 4 + 3 and + 4.
  const int x1 = layout.right - 6, x0 = x1 - 63, row = layout.top + 6 + 4;
  CHECK(pixel(image, x0, layout.top + 6) == Rgb{160, 160, 160});
  for (int x = x0 + 6; x <= x0 + 23; ++x) {
    CHECK(pixel(image, x, row + 3) == teal);
    CHECK(pixel(image, x, row + 4) == teal);
  }
  // Nameless series: no legend.
  flat.name.clear();
  const kiln::io::Image unnamed = kiln::io::line_plot({flat}, options);
  CHECK(pixel(unnamed, x0 + 10, row + 3) != teal);

  // Axis labels move the frame: bottom loses 4 + 2 + 7 rows, left gains 8 + 6 columns.
  kiln::io::PlotOptions labelled;
  labelled.x_label = "step";
  labelled.y_label = "loss";
  const kiln::io::PlotLayout plain = kiln::io::plot_layout({flat}, {});
  const kiln::io::PlotLayout moved = kiln::io::plot_layout({flat}, labelled);
  CHECK(moved.bottom == plain.bottom - 13);
  CHECK(moved.left == plain.left + 14);
  // The y label reads upwards in columns 8..15, centred on the data area.
  const kiln::io::Image with_labels = kiln::io::line_plot({flat}, labelled);
  int ink = 0;
  for (int y = 0; y < 400; ++y)
    for (int x = 8; x <= 15; ++x) ink += pixel(with_labels, x, y) == Rgb{0, 0, 0};
  CHECK(ink > 20);
  const int centre = (moved.top + moved.bottom) / 2;
  for (int y = 0; y < 400; ++y)
    if (std::abs(y - centre) > 13)
      for (int x = 8; x <= 15; ++x) CHECK(pixel(with_labels, x, y) == Rgb{255, 255, 255});
}

TEST_CASE("line_plot rejects what it cannot draw") {
  const kiln::io::Series ok{"a", {0, 1}, {0, 1}, {0, 0, 0}};
  CHECK(value_error_of([] { kiln::io::line_plot({}, {}); }).find("no series") != std::string::npos);
  const std::string mismatch =
      value_error_of([] { kiln::io::line_plot({{"loss", {0, 1, 2}, {0, 1}, {0, 0, 0}}}, {}); });
  CHECK(mismatch.find("series 0 ('loss') has 3 x values and 2 y values") != std::string::npos);
  CHECK(value_error_of([&] { kiln::io::line_plot({ok, {"empty", {}, {}, {0, 0, 0}}}, {}); })
            .find("series 1 ('empty') has no points") != std::string::npos);
  CHECK(value_error_of([] { kiln::io::line_plot({{"", {not_a_number}, {1}, {0, 0, 0}}}, {}); }).find("no point") !=
        std::string::npos);
  kiln::io::PlotOptions log_options;
  log_options.log_y = true;
  CHECK(value_error_of([&] { kiln::io::line_plot({{"", {1, 2}, {0, -1}, {0, 0, 0}}}, log_options); })
            .find("positive") != std::string::npos);
  kiln::io::PlotOptions tiny;
  tiny.width = 100;
  CHECK(value_error_of([&] { kiln::io::line_plot({ok}, tiny); }).find("100 x 400") != std::string::npos);
  // A plot feeds png_bytes as it is.
  const kiln::io::Image image = kiln::io::line_plot({ok}, {});
  CHECK(kiln::io::png_bytes(image).substr(1, 3) == "PNG");
}
