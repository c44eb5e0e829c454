// A shared object that is not an aiorpc module (no aiorpc_module entry point).
extern "C" __attribute__((visibility("default"))) int not_a_module() { return 42; }
