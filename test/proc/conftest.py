"""pytest glue for the process tests: every daemon a test started is killed and reaped after
it, whatever happened; each file ends with the summary line test/run.sh adds up."""
import os

import pytest

import harness


@pytest.fixture(autouse=True)
def reap_processes():
    yield
    for p in harness._procs:
        p.kill()
    harness._procs.clear()


def pytest_terminal_summary(terminalreporter):
    st = terminalreporter.stats
    passed = len(st.get("passed", []))
    failed = len(st.get("failed", [])) + len(st.get("error", []))
    files = {os.path.basename(r.nodeid.split("::")[0])
             for key in ("passed", "failed", "error") for r in st.get(key, [])}
    name = files.pop() if len(files) == 1 else "pytest"
    terminalreporter.write_line(
        f"[proc] {name}: test cases: {passed + failed} | {passed} passed | {failed} failed")
