// `aiorpc bench`: a closed-loop load generator (in the spirit of redis-benchmark).
#pragma once

namespace aiorpc::tools {

int benchMain(int argc, char** argv);

}  // namespace aiorpc::tools
