# strata_core: every layer below the server and the CLI (base, kernels, model,
# kv, cache, engine) as one static library, with the Debian packages it needs.
# Included by the top-level CMakeLists.txt and by the stand-alone benchmark
# projects (bench/cache, bench/kv), so they all build the same library.
# Needs STRATA_ROOT (the repository root); compile options are the caller's.
find_package(Threads REQUIRED)
find_package(nlohmann_json REQUIRED)
find_path(XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
find_library(XXHASH_LIBRARY xxhash REQUIRED)
find_package(PkgConfig REQUIRED)
# The KV cache store's codecs, Redis client and asynchronous disk I/O.
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
pkg_check_modules(LZ4 REQUIRED IMPORTED_TARGET liblz4)
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
# NFC normalization for the tokenizers whose reference normalizes (Qwen2/3).
pkg_check_modules(ICU REQUIRED IMPORTED_TARGET icu-uc)

# One library per architecture layer would be tidier to read, but the layers
# are enforced by folder and include discipline; one static library keeps the
# link simple.
file(GLOB_RECURSE STRATA_SOURCES CONFIGURE_DEPENDS
  ${STRATA_ROOT}/src/base/*.cpp
  ${STRATA_ROOT}/src/kernels/*.cpp
  ${STRATA_ROOT}/src/model/*.cpp
  ${STRATA_ROOT}/src/kv/*.cpp
  ${STRATA_ROOT}/src/cache/*.cpp
  ${STRATA_ROOT}/src/engine/*.cpp)
add_library(strata_core STATIC ${STRATA_SOURCES})
target_include_directories(strata_core PUBLIC ${STRATA_ROOT}/src ${XXHASH_INCLUDE_DIR})
target_link_libraries(strata_core PUBLIC Threads::Threads nlohmann_json::nlohmann_json ${XXHASH_LIBRARY}
  PkgConfig::ZSTD PkgConfig::LZ4 PkgConfig::HIREDIS PkgConfig::URING PkgConfig::ICU)
