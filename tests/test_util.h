// Helpers shared by tests: running tools, temp dirs, .npy files, test data.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace strata::testing {

inline std::string SourceDir() { return STRATA_SOURCE_DIR; }
inline std::string BinaryDir() { return STRATA_BINARY_DIR; }
inline std::string Python() { return "/usr/bin/python3"; }

// The strata CLI binary built beside the tests.
inline std::string StrataBin() {
  const char* env = std::getenv("STRATA_BIN");
  return env ? env : BinaryDir() + "/strata";
}

// A directory under the build tree that persists between runs (generated
// test models are cached there; they are deterministic given their recipe).
inline std::string TestDataDir(const std::string& sub) {
  const std::string dir = BinaryDir() + "/testdata/" + sub;
  std::filesystem::create_directories(dir);
  return dir;
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};

// Runs a shell command; output is stdout, plus stderr when merge_stderr.
inline CommandResult RunCommand(const std::string& cmd, bool merge_stderr = true) {
  CommandResult r;
  FILE* p = popen((cmd + (merge_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A temporary name beside `path` unique to this process: ctest runs test
// processes in parallel, and two of them may build the same cached file.
inline std::string TempBeside(const std::string& path) { return path + ".tmp" + std::to_string(getpid()); }

// A synthetic model made by tools/synth/make_model.py with `flags`, cached
// in the build tree as testdata/<sub>/<name>.gguf (deterministic given flags).
inline std::string SynthModel(const std::string& sub, const std::string& name, const std::string& flags) {
  const std::string path = TestDataDir(sub) + "/" + name + ".gguf";
  if (!std::filesystem::exists(path)) {
    const std::string tmp = TempBeside(path);
    auto r = RunCommand(Python() + " " + SourceDir() + "/tools/synth/make_model.py " + flags + " -o " + tmp +
                        " && mv " + tmp + " " + path);
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }
  return path;
}

// The small llama model the serving tests use: 2 layers, dim 256, GQA 4/2,
// context 512. Its file name is the model id the server reports.
inline std::string TinyLlama(const std::string& sub) {
  return SynthModel(sub, "tiny_llama_f32",
                    "--arch llama --dim 256 --layers 2 --heads 4 --kv-heads 2 --head-dim 64 --ffn 512 "
                    "--vocab-size 300 --type f32 --seed 3 --ctx 512");
}

inline std::string SharedModel(const std::string& name) {
  const std::string path = SourceDir() + "/../shared/models/" + name;
  return std::filesystem::exists(path) ? path : "";
}

// Reads a little-endian float32 C-order .npy file.
inline bool ReadNpyF32(const std::string& path, std::vector<float>* data, std::vector<int64_t>* shape) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  char magic[6];
  in.read(magic, 6);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) return false;
  uint8_t ver[2];
  in.read(reinterpret_cast<char*>(ver), 2);
  uint32_t hlen = 0;
  if (ver[0] == 1) {
    uint16_t h16;
    in.read(reinterpret_cast<char*>(&h16), 2);
    hlen = h16;
  } else {
    in.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos) {
    return false;
  }
  const size_t lp = header.find('('), rp = header.find(')');
  shape->clear();
  std::stringstream ss(header.substr(lp + 1, rp - lp - 1));
  std::string item;
  int64_t total = 1;
  while (std::getline(ss, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    shape->push_back(std::stoll(item));
    total *= shape->back();
  }
  data->resize(static_cast<size_t>(total));
  in.read(reinterpret_cast<char*>(data->data()), static_cast<std::streamsize>(total * 4));
  return static_cast<bool>(in);
}

// True when the suite runs under the sanitizers (slow): heavy tests shrink.
inline bool Sanitized() { return std::getenv("STRATA_SANITIZED") != nullptr; }

}  // namespace strata::testing
