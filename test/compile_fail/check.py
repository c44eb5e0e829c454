#!/usr/bin/env python3
"""Compiles test/compile_fail/coroutine_ref_param.cc once per shape: shapes 0-2 must fail with
Service::def's message (a coroutine handler takes its parameters by value), shape 3 must compile.
Usage: check.py SOURCE COMPILER [ARGS...]"""
import subprocess
import sys

src, cmd = sys.argv[1], sys.argv[2:]
want = "takes its parameters by value"
bad = 0
for shape, should_compile in [(0, False), (1, False), (2, False), (3, True)]:
    p = subprocess.run(cmd + [f"-DSHAPE={shape}", "-fsyntax-only", src],
                       capture_output=True, text=True)
    ok = p.returncode == 0
    if should_compile and not ok:
        print(f"shape {shape}: should compile, failed:\n{p.stderr[-3000:]}")
        bad += 1
    elif not should_compile and (ok or want not in p.stderr):
        print(f"shape {shape}: should fail with '{want}', got rc={p.returncode}:\n{p.stderr[-3000:]}")
        bad += 1
    else:
        print(f"shape {shape}: as expected")
print(f"{4 - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
