"""The documentation's shell blocks, run as pasted, and its whole C++ programs, compiled and run. Every ```sh block of README.md and docs/*.md
carries a marker right above it: `<!-- doc-test: run -->` (run here, in a temporary folder where
`build/` is the build under test, with bash -e: a failing line fails the test) or
`<!-- doc-test: skip: WHY -->` (a reason is required). A block without one fails the test, so a
new block is classified when it is written. A ```cpp block marked
`<!-- doc-test: compile and run ... -->` is a whole program: compiled as shown against the build
under test, run, and expected to print `listening on HOST:PORT`, answer `greet` and stop on
SIGTERM; one marked `<!-- doc-test: excerpt of PATH -->` must be lines of that tested example;
one marked `<!-- doc-test: compile in: SETTING -->` is a fragment, compiled as shown inside the
named setting (SETTINGS: the names it uses, declared). Every ```cpp block has one of the three.

The blocks use the documented fixed ports (7999, 9999, ...): they run in a private network
namespace (unshare -n, as root) with only loopback, so they collide with nothing on the machine
and nothing can leave it. Daemons a block starts with `&` are stopped when it ends. Runs in the
plain build only (the sanitizer build runs the same binaries' code in the other suites)."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.environ.get("AIORPC_BUILD", os.path.join(ROOT, "build"))


def sanitized():
    with open(os.path.join(BUILD, "meson-info", "intro-buildoptions.json")) as f:
        opts = {o["name"]: o["value"] for o in json.load(f)}
    return opts.get("b_sanitize", "none") not in ("none", "")


if __name__ == "__main__" and not sanitized():
    sys.path.insert(0, HERE)
    from harness import in_private_netns
    in_private_netns("docs_test.py")

MARKER = re.compile(r"<!--\s*doc-test:\s*(run|skip|compile and run|excerpt of|compile in)\b:?(.*?)-->\s*$",
                    re.S)


def blocks(lang="sh"):
    """(file, line, marker, reason, text) for every ```LANG block of the documentation."""
    files = [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
        if f.endswith(".md"))
    out = []
    for path in files:
        text = open(path).read()
        for m in re.finditer(r"^```" + lang + r"\n(.*?)^```", text, re.S | re.M):
            before = text[:m.start()].rstrip("\n")
            mk = MARKER.search(before[before.rfind("<!--"):])  # the last comment only
            line = text.count("\n", 0, m.start()) + 1
            rel = os.path.relpath(path, ROOT)
            if not mk or not before.endswith("-->"):
                out.append((rel, line, None, "", m.group(1)))
            else:
                out.append((rel, line, mk.group(1), " ".join(mk.group(2).split()), m.group(1)))
    return out


def run_block(text, timeout=180):
    work = tempfile.mkdtemp(prefix="aiorpc-doc-")
    os.symlink(BUILD, os.path.join(work, "build"))
    env = dict(os.environ, PATH=BUILD + os.pathsep + os.environ.get("PATH", ""))
    # Output to a file, not a pipe: the daemons left in the background keep it open.
    log = os.path.join(work, "out.log")
    with open(log, "w") as out:
        p = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", text], cwd=work, env=env,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = -1
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the daemons it left in the background
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGTERM:
                subprocess.run(["sleep", "1"])
    with open(log) as f:
        return rc, f.read()


def test_every_shell_block_is_marked():
    bad = [f"{f}:{line}" for f, line, mark, reason, _ in blocks()
           if mark is None or (mark == "skip" and not reason)]
    assert not bad, "sh blocks without a doc-test marker (run, or skip: WHY): " + ", ".join(bad)


def test_the_runnable_blocks_run_as_pasted():
    ran = 0
    for f, line, mark, _, text in blocks():
        if mark != "run":
            continue
        rc, out = run_block(text)
        assert rc == 0, f"{f}:{line}: the block failed (exit {rc}):\n{out[-4000:]}"
        ran += 1
    assert ran >= 3, ran


def test_cpp_excerpts_are_lines_of_a_built_and_tested_example():
    """A ```cpp block marked `excerpt of PATH` shows lines of PATH (an example the build compiles
    and a test runs): every line of the block is a line of the file (indentation aside)."""
    excerpts = [b for b in blocks("cpp") if b[2] == "excerpt of"]
    assert excerpts, "no excerpt blocks found"
    for f, line, _, path, text in excerpts:
        with open(os.path.join(ROOT, path)) as src:
            lines = {ln.strip() for ln in src}
        for ln in text.splitlines():
            assert not ln.strip() or ln.strip() in lines, f"{f}:{line}: not in {path}: {ln!r}"


# The settings a fragment (`compile in: NAME`) is compiled in: what comes before it (the names it
# uses, declared as a program would have them) and after it.
SETTINGS = {
    "a handler setting": ("void fragment(core::Loop& loop, rpc::Service& foo) {", "}"),
    "a coroutine": ("core::Task<void> fragment(core::Loop& loop, std::string c, std::string ep, "
                    "int id) {", "co_return;\n}"),
    "a function": ("void fragment() {", "}"),
    "a server": ("void fragment(core::Loop& loop, rpc::Server& server) {", "}"),
    "a started server": ("void fragment(core::Loop& loop, core::Result<core::Address> bound) {",
                         "}"),
    "a thread pool": ("struct Pool { void submit(std::function<void()> job); };\n"
                      "uint64_t compute(uint64_t n);\n"
                      "void fragment(core::Loop& loop, rpc::Service& svc, Pool& pool) {\n"
                      "using rpc::Reply;", "}"),
}


def build_flags():
    uninstalled = os.path.join(BUILD, "meson-uninstalled")
    env = dict(os.environ, PKG_CONFIG_PATH=uninstalled)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "aiorpc"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    return flags + ["-I" + os.path.join(BUILD, "include"), "-I" + os.path.join(ROOT, "include"),
                    "-Wl,-rpath," + BUILD]


def test_every_cpp_block_is_compiled():
    """A ```cpp block is a whole program (`compile and run`), lines of a tested example
    (`excerpt of PATH`) or a fragment compiled in a named setting (`compile in: NAME`, see
    SETTINGS): each is compiled as shown, with warnings as errors."""
    unmarked = [f"{f}:{line}" for f, line, mark, _, _ in blocks("cpp") if mark is None]
    assert not unmarked, "cpp blocks without a doc-test marker: " + ", ".join(unmarked)
    frags = [b for b in blocks("cpp") if b[2] == "compile in"]
    assert frags, "no fragments found"
    flags = [f for f in build_flags() if f.startswith("-I") or f.startswith("-D")]
    for f, line, _, setting, text in frags:
        assert setting in SETTINGS, f"{f}:{line}: no setting named {setting!r}"
        before, after = SETTINGS[setting]
        src = ("#include <aiorpc/aiorpc.h>\n#include <aiorpc/agents/heartbeat.h>\n"
               "#include <functional>\nusing namespace aiorpc;\nusing rpc::arg;\n"
               f"{before}\n#line {line + 1} \"{f}\"\n{text}\n{after}\n")
        work = tempfile.mkdtemp(prefix="aiorpc-doc-")
        path = os.path.join(work, "fragment.cc")
        with open(path, "w") as out:
            out.write(src)
        r = subprocess.run([os.environ.get("CXX", "c++"), "-std=c++20", "-fsyntax-only", "-Wall",
                            "-Wextra", "-Werror", "-Wno-unused-variable", "-Wno-unused-parameter",
                            "-Wno-unused-but-set-variable", path, *flags],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{f}:{line}: does not compile as shown:\n{r.stderr[-3000:]}"


def test_the_whole_cpp_programs_compile_and_serve():
    sys.path.insert(0, HERE)
    from harness import Proc, Raw
    flags = build_flags()
    progs = [b for b in blocks("cpp") if b[2] == "compile and run"]
    assert progs, "no whole program in the documentation"
    for f, line, _, _, text in progs:
        work = tempfile.mkdtemp(prefix="aiorpc-doc-")
        src, exe = os.path.join(work, "my_server.cc"), os.path.join(work, "my_server")
        with open(src, "w") as out:
            out.write(text)
        cxx = os.environ.get("CXX", "c++")
        r = subprocess.run([cxx, "-std=c++20", "-O0", "-Wall", "-Wextra", "-Werror", src, "-o", exe,
                            *flags], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{f}:{line}: does not compile as shown:\n{r.stderr[-3000:]}"
        srv = Proc([exe])
        assert Raw(srv).call("greet", ["ann"])[3] == "hello ann", f"{f}:{line}"
        srv.signal(signal.SIGTERM)
        assert srv.wait(timeout=10) == 0, f"{f}:{line}: no clean stop on SIGTERM"


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    if sanitized():
        print("skipped here: the plain build runs the documentation's blocks")
        print("[proc] docs_test.py: test cases: 0 | 0 passed | 0 failed")
        sys.exit(0)
    sys.path.insert(0, HERE)
    from harness import run
    run(globals())
