# Runs one compile-fail test: SOURCE must NOT compile, and the compiler's output must contain the
# text of its "// expect: <text>" line (the wording of the static_assert or concept it trips).
#   cmake -DCXX=<compiler> -DFLAGS=<;-list> -DSOURCE=<file.cpp> -P compile_fail.cmake
file(STRINGS "${SOURCE}" _expect_lines REGEX "^// expect: ")
if(NOT _expect_lines)
  message(FATAL_ERROR "${SOURCE}: no '// expect: <text of the error>' line")
endif()
execute_process(COMMAND "${CXX}" ${FLAGS} -fsyntax-only "${SOURCE}"
  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
if(_rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must not")
endif()
foreach(_line IN LISTS _expect_lines)
  string(REGEX REPLACE "^// expect: *" "" _text "${_line}")
  string(STRIP "${_text}" _text)
  string(FIND "${_out}" "${_text}" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "${SOURCE} failed to compile, but without \"${_text}\":\n${_out}")
  endif()
  message(STATUS "fails to compile, as it must, with \"${_text}\"")
endforeach()
