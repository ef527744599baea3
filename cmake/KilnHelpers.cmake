# Helpers for kiln's own programs (tests, examples, benchmarks). Never applied to kiln::kiln:
# a project that uses kiln chooses its own warnings and -march flags.
include_guard(GLOBAL)
include(CheckCXXCompilerFlag)

set(KILN_WARNING_FLAGS "")
set(KILN_NATIVE_FLAGS "")
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(KILN_WARNING_FLAGS -Wall -Wextra)
  if(KILN_WERROR)
    list(APPEND KILN_WARNING_FLAGS -Werror)
  endif()
  # GCC 12 and 13 report false -Wrestrict overlaps inside libstdc++'s std::string at -O2/-O3
  # (GCC bug 105329), e.g. for `"text" + std::to_string(n)`; the code is fine.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 14)
    list(APPEND KILN_WARNING_FLAGS -Wno-restrict)
  endif()
  if(KILN_NATIVE)
    check_cxx_compiler_flag(-march=native KILN_HAVE_MARCH_NATIVE)
    if(KILN_HAVE_MARCH_NATIVE)
      set(KILN_NATIVE_FLAGS -march=native)
    else()
      message(STATUS "kiln: ${CMAKE_CXX_COMPILER_ID} does not accept -march=native; KILN_NATIVE has no effect")
    endif()
  endif()
elseif(MSVC)
  set(KILN_WARNING_FLAGS /W4 /permissive-)
  if(KILN_WERROR)
    list(APPEND KILN_WARNING_FLAGS /WX)
  endif()
endif()

# kiln_setup_program(<target>): one of kiln's own executables or object libraries — links
# kiln::kiln and adds the project's warning flags (and -march=native when KILN_NATIVE is ON).
function(kiln_setup_program target)
  target_link_libraries(${target} PRIVATE kiln::kiln)
  target_compile_options(${target} PRIVATE ${KILN_WARNING_FLAGS} ${KILN_NATIVE_FLAGS})
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
endfunction()
