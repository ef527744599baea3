# Reads the version from include/kiln/version.hpp (the single source of truth) into
# KILN_VERSION_MAJOR, KILN_VERSION_MINOR, KILN_VERSION_PATCH and KILN_VERSION.
# Included before project(), so it may use nothing but plain CMake commands.

set(_kiln_version_header "${CMAKE_CURRENT_LIST_DIR}/../include/kiln/version.hpp")
file(STRINGS "${_kiln_version_header}" _kiln_version_lines
     REGEX "^#define KILN_VERSION_(MAJOR|MINOR|PATCH|STRING) ")
foreach(_part MAJOR MINOR PATCH)
  set(KILN_VERSION_${_part} "")
  foreach(_line IN LISTS _kiln_version_lines)
    if(_line MATCHES "^#define KILN_VERSION_${_part} +([0-9]+)$")
      set(KILN_VERSION_${_part} "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  if(KILN_VERSION_${_part} STREQUAL "")
    message(FATAL_ERROR "kiln: could not read KILN_VERSION_${_part} from ${_kiln_version_header}")
  endif()
endforeach()
set(KILN_VERSION "${KILN_VERSION_MAJOR}.${KILN_VERSION_MINOR}.${KILN_VERSION_PATCH}")

set(_kiln_version_string "")
foreach(_line IN LISTS _kiln_version_lines)
  if(_line MATCHES "^#define KILN_VERSION_STRING +\"([^\"]*)\"")
    set(_kiln_version_string "${CMAKE_MATCH_1}")
  endif()
endforeach()
if(NOT _kiln_version_string STREQUAL KILN_VERSION)
  message(FATAL_ERROR "kiln: KILN_VERSION_STRING \"${_kiln_version_string}\" in ${_kiln_version_header} "
                      "does not match the numeric macros (${KILN_VERSION}); make them agree.")
endif()
unset(_kiln_version_header)
unset(_kiln_version_lines)
unset(_kiln_version_string)
unset(_line)
unset(_part)
