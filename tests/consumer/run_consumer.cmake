# Builds and runs tests/consumer against kiln in one of three ways:
#   cmake -DMODE=install|subdirectory|pkgconfig -DKILN_SOURCE_DIR=... -DKILN_BINARY_DIR=...
#         -DWORK_DIR=... -DCXX=... -DGENERATOR=... [-DPKG_CONFIG=...] -P run_consumer.cmake
# install:      cmake --install the kiln build tree into WORK_DIR/prefix, then find_package.
# subdirectory: add_subdirectory(KILN_SOURCE_DIR) from the consumer.
# pkgconfig:    install, then compile main.cpp with `pkg-config --cflags --libs kiln`.
cmake_minimum_required(VERSION 3.25)

foreach(_var MODE KILN_SOURCE_DIR KILN_BINARY_DIR WORK_DIR CXX GENERATOR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_consumer.cmake: -D${_var}=... is required")
  endif()
endforeach()

set(_consumer_src "${CMAKE_CURRENT_LIST_DIR}")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    list(JOIN ARGN " " _cmd)
    message(FATAL_ERROR "consumer (${MODE}): ${what} failed (${_rc})\n$ ${_cmd}\n${_out}")
  endif()
  message(STATUS "consumer (${MODE}): ${what}: ok")
  set(step_output "${_out}" PARENT_SCOPE)
endfunction()

set(_prefix "${WORK_DIR}/prefix")
if(MODE STREQUAL "install" OR MODE STREQUAL "pkgconfig")
  run_step("install kiln into ${_prefix}" "${CMAKE_COMMAND}" --install "${KILN_BINARY_DIR}" --prefix "${_prefix}")
endif()

if(MODE STREQUAL "install")
  run_step("configure" "${CMAKE_COMMAND}" -S "${_consumer_src}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
           "-DCMAKE_CXX_COMPILER=${CXX}" "-DCMAKE_PREFIX_PATH=${_prefix}" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
  string(FIND "${step_output}" "in ${_prefix}/" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "consumer (install): kiln was not found in ${_prefix}:\n${step_output}")
  endif()
  run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
  run_step("run" "${WORK_DIR}/build/app")
elseif(MODE STREQUAL "subdirectory")
  run_step("configure" "${CMAKE_COMMAND}" -S "${_consumer_src}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
           "-DCMAKE_CXX_COMPILER=${CXX}" "-DKILN_CONSUMER_SOURCE_DIR=${KILN_SOURCE_DIR}")
  run_step("build" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
  run_step("run" "${WORK_DIR}/build/app")
elseif(MODE STREQUAL "pkgconfig")
  if(NOT PKG_CONFIG)
    message(FATAL_ERROR "consumer (pkgconfig): -DPKG_CONFIG=<pkg-config> is required")
  endif()
  file(GLOB _pc_files "${_prefix}/*/pkgconfig/kiln.pc" "${_prefix}/*/*/pkgconfig/kiln.pc")
  if(NOT _pc_files)
    message(FATAL_ERROR "consumer (pkgconfig): no kiln.pc under ${_prefix}")
  endif()
  list(GET _pc_files 0 _pc_file)
  get_filename_component(_pc_dir "${_pc_file}" DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} "${_pc_dir}")
  run_step("pkg-config --modversion" "${PKG_CONFIG}" --modversion kiln)
  string(STRIP "${step_output}" _version)
  run_step("pkg-config --cflags --libs" "${PKG_CONFIG}" --cflags --libs kiln)
  string(STRIP "${step_output}" _flags)
  string(FIND "${_flags}" "-I${_prefix}/" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "consumer (pkgconfig): flags do not point into ${_prefix}: ${_flags}")
  endif()
  separate_arguments(_flags UNIX_COMMAND "${_flags}")
  run_step("compile" "${CXX}" -Wall -Wextra -Werror "-DKILN_EXPECTED_VERSION=\"${_version}\""
           "${_consumer_src}/main.cpp" ${_flags} -o "${WORK_DIR}/app")
  run_step("run" "${WORK_DIR}/app")
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()
