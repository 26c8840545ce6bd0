# What every stand-alone benchmark project (bench/cache, bench/kv) starts
# with after its project() line: the main build's language settings and
# native Release flags, then strata_core built from the same sources.
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)
endif()
get_filename_component(STRATA_ROOT ${CMAKE_CURRENT_LIST_DIR}/.. ABSOLUTE)

add_compile_options(-Wall -Wextra -march=native)
if(CMAKE_BUILD_TYPE STREQUAL "Release")
  add_compile_options(-O3)
endif()

include(${STRATA_ROOT}/cmake/strata_core.cmake)
