// Replays fuzz inputs (files or directories) through LLVMFuzzerTestOneInput without libFuzzer,
// so every build (gcc, ASan) runs the seed corpus.
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static int runFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return 1;
}

int main(int argc, char** argv) {
  int n = 0;
  for (int i = 1; i < argc; ++i) {
    struct stat st {};
    if (stat(argv[i], &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      DIR* d = opendir(argv[i]);
      while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') n += runFile(std::string(argv[i]) + "/" + e->d_name);
      closedir(d);
    } else {
      n += runFile(argv[i]);
    }
  }
  std::printf("[proc] fuzz replay: test cases: %d | %d passed | 0 failed\n", n, n);
  return n > 0 ? 0 : 1;
}
