"""Operating aiorpcd (issue 14 item 6): SIGHUP reopens the log file, JSON logs, systemd
readiness through NOTIFY_SOCKET, and what `meson install` puts under a prefix."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import msgpack

from harness import BUILD, Proc, Raw, binary, daemon, run, wait_until


def test_sighup_reopens_the_log_file_and_the_daemon_goes_on():
    d = tempfile.mkdtemp()
    log = os.path.join(d, "aiorpcd.log")
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0", "--log-file", log)
    os.rename(log, log + ".1")  # what logrotate does
    srv.signal(signal.SIGHUP)
    assert wait_until(lambda: os.path.exists(log) and "log file reopened" in open(log).read())
    assert Raw(srv).call("echo", [1])[3] == [1]  # still serving
    srv.signal(signal.SIGTERM)
    assert srv.wait(timeout=10) == 0
    assert "aiorpcd stopped" in open(log).read()
    assert "aiorpcd stopped" not in open(log + ".1").read()


def test_json_log_lines():
    d = tempfile.mkdtemp()
    log = os.path.join(d, "aiorpcd.log")
    srv = daemon("--role=demo", "--bind", "127.0.0.1:0", "--log-file", log, "--log-format",
                 "json")
    r = Raw(srv)
    r.send([2, "notify", ['quote " backslash \\ newline \n tab \t end']])
    assert r.call("echo", [1], msgid=2)[3] == [1]  # the notification was handled before it
    srv.signal(signal.SIGTERM)
    assert srv.wait(timeout=10) == 0
    lines = [json.loads(line) for line in open(log).read().splitlines()]
    assert all(set(x) == {"ts", "level", "msg"} for x in lines), lines
    assert any("quote \" backslash \\ newline \n tab \t end" in x["msg"] for x in lines), lines
    p = subprocess.run([binary("aiorpcd"), "--role=demo", "--log-format", "xml"],
                       capture_output=True, timeout=10)
    assert p.returncode == 2 and b"--log-format" in p.stderr


def silent_listener():
    """A peer that accepts connections and never reads or answers (a hung keepalive)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv


def timed_stop(proc):
    t0 = time.time()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    return time.time() - t0


def test_a_stop_ends_in_bounded_time_whatever_keepalives_do():
    # grace 0.5 s + drain timeout 1 s + 2 s: the bound of SPEC §7
    bound = 0.5 + 1 + 2
    hung = silent_listener()
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0")
    # 1. a keepalive that accepts and never answers: a heartbeat in flight (10 s interval: its
    # timeout is 20 s) and an unregister nobody answers
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--drain-grace", "0.5",
                 "--drain-timeout", "1", "--heartbeat-interval", "10", "--keepalive",
                 f"127.0.0.1:{hung.getsockname()[1]},{ka.endpoint}")
    assert wait_until(lambda: "sample.foo" in Raw(ka).call("get_services", [])[3])
    took = timed_stop(svc)
    print(f"SIGTERM to exit with a keepalive that never answers: {took:.2f} s (bound {bound} s)")
    assert took < bound, took
    assert "sample.foo" not in Raw(ka).call("get_services", [])[3]  # the live one was told
    hung.close()


def test_a_stop_ends_in_bounded_time_whatever_clients_do():
    bound = 0.5 + 1 + 2
    # a client that stops reading: the replies it is owed fit in the daemon's socket buffer,
    # so the drain finds nothing owed and the socket lingers at exit while they stay unsent
    svc = daemon("--role=demo", "--bind", "127.0.0.1:0", "--drain-grace", "0.5",
                 "--drain-timeout", "1")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", svc.port))
    s.sendall(b"".join(msgpack.packb([0, i, "echo", ["x" * 20000]]) for i in range(20)))
    time.sleep(0.5)
    took = timed_stop(svc)
    print(f"SIGTERM to exit with a client that never reads: {took:.2f} s (bound {bound} s)")
    assert took < bound, took
    s.close()


def test_logs_cannot_be_forged_and_peer_floods_are_rate_limited():
    d = tempfile.mkdtemp()
    log = os.path.join(d, "ka.log")
    ka = daemon("--role=keepalive", "--bind", "127.0.0.1:0", "--log-file", log, "--ttl", "0.6",
                "--check-interval", "0.2")
    r = Raw(ka)
    forged = "2026-01-01T00:00:00.000Z info  audit: registered forged at 10.0.0.1:1"
    for name in ("x\n" + forged, "y\r\x1b[2J\x00z"):
        assert r.call("heartbeat", [name, "127.0.0.1", 1])[3] is True
    # 30 records that expire together: each named (up to 24), then one summary
    for i in range(30):
        assert r.call("heartbeat", ["exp%02d" % i, "127.0.0.1", 100 + i], msgid=i)[3] is True
    r.close()
    # 300 connections that each send bytes that are not msgpack-rpc
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", ka.port))
        s.sendall(b"\xc1" * 8)
        s.close()
    time.sleep(1.5)
    ka.signal(signal.SIGTERM)
    assert ka.wait() == 0
    lines = open(log).read().splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
    assert all(stamp.match(x) for x in lines), [x for x in lines if not stamp.match(x)]
    assert not any(x.startswith("2026-01-01") for x in lines)
    text = "\n".join(lines)
    assert "registered x\\n2026-01-01T00:00:00.000Z info  audit" in text, text
    assert "registered y\\r\\x1b[2J\\x00z" in text, text
    assert "\x1b" not in text and "\r" not in text
    named = [x for x in lines if "keepalive: expired " in x]
    unnamed = [int(m) for m in re.findall(r"records expired in all \((\d+) more not named\)",
                                          text)]
    assert len(named) + sum(unnamed) == 32, (named, unnamed)  # 30 + x + y
    assert len(named) <= 24 * (1 + len(unnamed)), named
    assert any("expired exp07 at 127.0.0.1:107 (no heartbeat for 0.6 s)" in x for x in named) \
        or unnamed, named
    protocol = [x for x in lines if "protocol error from" in x]
    assert 1 <= len(protocol) <= 5, len(protocol)
    assert any("more since the last line" in x for x in protocol) or len(protocol) == 1, protocol


def test_readiness_and_stopping_through_notify_socket():
    d = tempfile.mkdtemp()
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    p = subprocess.Popen([binary("aiorpcd"), "--role=demo", "--bind", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        ready = s.recv(4096).decode()
        assert "READY=1" in ready and "listening on 127.0.0.1:" in ready, ready
        p.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in s.recv(4096).decode()
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_readiness_never_blocks_on_a_full_notify_socket():
    # A NOTIFY_SOCKET whose queue is full (nobody reads it): sd_notify blocked forever there (the
    # daemon never served and ignored SIGTERM). Now the notification is dropped with a warning.
    d = tempfile.mkdtemp()
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    w = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    w.setblocking(False)
    try:
        while True:
            w.sendto(b"x" * 512, path)
    except BlockingIOError:
        pass  # full
    env = dict(os.environ, NOTIFY_SOCKET=path)
    p = Proc([binary("aiorpcd"), "--role=demo", "--bind", "127.0.0.1:0"], env=env)
    assert Raw(p).call("echo", [1])[3] == [1]
    p.signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0


def test_pid_file_refuses_links_and_other_files_and_is_removed_when_start_fails():
    d = tempfile.mkdtemp()
    target = os.path.join(d, "target")
    with open(target, "w") as f:
        f.write("precious\n")
    link = os.path.join(d, "link")
    os.symlink(target, link)
    for bad in (link, "/dev/null"):
        r = subprocess.run([binary("aiorpcd"), "--role=demo", "--bind", "127.0.0.1:0",
                            "--pid-file", bad], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and "--pid-file" in r.stderr, (bad, r.stderr)
    assert open(target).read() == "precious\n"  # never followed
    # listen fails after the pid file was written: it goes too
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    pid = os.path.join(d, "p.pid")
    r = subprocess.run([binary("aiorpcd"), "--role=demo", "--bind",
                        f"127.0.0.1:{taken.getsockname()[1]}", "--pid-file", pid],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr
    assert not os.path.exists(pid)


def test_token_and_config_only_from_regular_files_of_bounded_size():
    d = tempfile.mkdtemp()
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo, 0o600)  # opening it for reading used to hang start-up
    big = os.path.join(d, "big.conf")
    with open(big, "w") as f:
        f.write("# " + "x" * (2 << 20) + "\n")
    for args, word in ((["--role=keepalive", "--auth-token-file", fifo], "token file"),
                       (["--role=demo", "--config", fifo], "--config"),
                       (["--role=demo", "--config", "/dev/zero"], "--config"),
                       (["--role=demo", "--config=" + big], "over")):
        r = subprocess.run([binary("aiorpcd"), "--bind", "127.0.0.1:0", *args],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and word in r.stderr, (args, r.stderr)


def test_config_is_as_strict_as_the_command_line():
    d = tempfile.mkdtemp()

    def start(text, *extra):
        path = os.path.join(d, "x.conf")
        with open(path, "w") as f:
            f.write(text)
        return subprocess.run([binary("aiorpcd"), "--config", path, "--bind", "127.0.0.1:0",
                               *extra], capture_output=True, text=True, timeout=10)
    # a typo of a key, and a section, were ignored: a keepalive meant to be closed started open
    r = start('role = "keepalive"\nalow = "10.0.0.0/8"\n')
    assert r.returncode == 2 and "unknown key 'alow'" in r.stderr, r.stderr
    r = start('role = "keepalive"\nauth-token-flie = "/x"\n')
    assert r.returncode == 2 and "auth-token-flie" in r.stderr, r.stderr
    r = start('role = "keepalive"\n[keepalive]\nttl = 5\n')
    assert r.returncode == 2 and "section [keepalive]" in r.stderr, r.stderr
    r = start('role = "keepalive"\nttl = "soon"\n')
    assert r.returncode == 2 and "ttl" in r.stderr, r.stderr
    # a list flag takes an array whole (it kept the last element): loopback is allowed here
    path = os.path.join(d, "ok.conf")
    with open(path, "w") as f:
        f.write('role = "demo"\nallow = ["127.0.0.1/32", "10.0.0.0/8"]\n')
    p = Proc([binary("aiorpcd"), "--config", path, "--bind", "127.0.0.1:0"])
    assert Raw(p).call("echo", [1])[3] == [1]
    # an array for a flag that takes one value (it kept the last element)
    r = start('role = "demo"\nbind = ["127.0.0.1:1", "127.0.0.1:0"]\n')
    assert r.returncode == 2 and "'bind' takes one value, not an array" in r.stderr, r.stderr
    r = start('role = "demo"\ndrain-timeout = [1, 2]\n')
    assert r.returncode == 2 and "'drain-timeout' takes one value" in r.stderr, r.stderr
    # `module` in the file loads it, like --module (it was ignored)
    greeter = os.path.join(BUILD, "docs", "examples", "libgreeter.so")
    for line in (f'module = "{greeter}"', f"module = ['{greeter}']"):
        path = os.path.join(d, "mod.conf")
        with open(path, "w") as f:
            f.write(f'role = "greeter"\n{line}\n')
        p = Proc([binary("aiorpcd"), "--config", path, "--bind", "127.0.0.1:0"])
        assert "greet" in Raw(p).call("\0reflection", None)[3]["methods"], line
        p.kill()
    r = start('role = "greeter"\nmodule = "/nonexistent/libx.so"\n')
    assert r.returncode == 2 and "cannot load module" in r.stderr, r.stderr


def test_meson_install_puts_binaries_and_unit_under_the_prefix():
    dest = tempfile.mkdtemp()
    r = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", dest,
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    files = []
    for root, _, names in os.walk(dest):
        files += [os.path.relpath(os.path.join(root, n), dest) for n in names]
    prefix = next(f for f in files if f.endswith("/bin/aiorpcd")).rsplit("/bin/", 1)[0]
    assert f"{prefix}/bin/aiorpc" in files, files
    unit = f"{prefix}/lib/systemd/system/aiorpcd@.service"
    assert unit in files, files
    text = open(os.path.join(dest, unit)).read()
    assert "Type=notify" in text and f"ExecStart=/{prefix}/bin/aiorpcd --config /etc/aiorpc/%i.conf" in text
    v = subprocess.run([os.path.join(dest, prefix, "bin/aiorpcd"), "--version"],
                       capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("aiorpcd ")
    # man pages: the OPTIONS sections are the binaries' own --help (every flag, every command)
    pages = {}
    for page in ("aiorpcd.1", "aiorpc.1"):
        path = next((f for f in files if f.endswith("/man1/" + page)), None)
        assert path and path.startswith(prefix + "/share/man/"), (page, files)
        pages[page] = open(os.path.join(dest, path)).read()
    assert pages["aiorpcd.1"].startswith(".TH AIORPCD 1")
    help_text = subprocess.run([os.path.join(dest, prefix, "bin/aiorpcd"), "--help"],
                               capture_output=True, text=True).stdout
    for flag in re.findall(r"^  (--[a-z-]+)", help_text, re.M):
        assert flag.replace("-", "\\-") in pages["aiorpcd.1"] or flag in pages["aiorpcd.1"], flag
    for word in ("SIGHUP", "EXIT STATUS", "--eject-after", "--auth-token-file"):
        assert word in pages["aiorpcd.1"], word
    for word in ("aiorpc bench", "--cpu-pid", "--timeout", "64"):
        assert word in pages["aiorpc.1"], word
    # the unit as shipped: systemd-analyze verify says nothing (its binary where it was put)
    assert "LogsDirectory=aiorpc" in text and "LoadCredential=auth-token:/etc/aiorpc/token" in text
    units = tempfile.mkdtemp()
    with open(os.path.join(units, "aiorpcd@.service"), "w") as f:
        f.write(text.replace(f"/{prefix}/bin/aiorpcd", os.path.join(dest, prefix, "bin/aiorpcd")))
    os.symlink("aiorpcd@.service", os.path.join(units, "aiorpcd@keepalive.service"))
    v = subprocess.run(["systemd-analyze", "verify", os.path.join(units, "aiorpcd@keepalive.service")],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SYSTEMD_UNIT_PATH=units + ":"))
    assert v.returncode == 0 and not v.stderr.strip() and not v.stdout.strip(), v


def test_the_units_token_setup_works_as_its_dynamic_user_reads_it():
    # What the unit does: /etc/aiorpc/token stays root's (chmod 600); systemd copies it, as the
    # credential auth-token, into $CREDENTIALS_DIRECTORY, readable by the service's user only;
    # the config names it by a relative path. Run as that kind of user (nobody) here.
    import pwd
    nobody = pwd.getpwnam("nobody")
    creds = tempfile.mkdtemp()
    os.chmod(creds, 0o755)
    token = "t0ken-from-a-credential-0123456789"

    def credential(text):
        path = os.path.join(creds, "auth-token")
        if os.path.exists(path):
            os.unlink(path)
        with open(path, "w") as f:
            f.write(text)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(path, 0o400)
    conf = os.path.join(creds, "ka.conf")
    with open(conf, "w") as f:
        f.write('role = "keepalive"\nbind = "127.0.0.1:0"\nauth-token-file = "auth-token"\n')
    os.chmod(conf, 0o644)
    exe = os.path.join(creds, "aiorpcd")  # (a build tree may not be reachable by nobody)
    shutil.copy(binary("aiorpcd"), exe)
    os.chmod(exe, 0o755)
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                 "--clear-groups", exe, "--config", conf]
    env = dict(os.environ, CREDENTIALS_DIRECTORY=creds)
    credential(token + "\n")
    ka = Proc(as_nobody, env=env)
    r = Raw(ka)
    assert r.call("heartbeat", {"name": "s", "host": "127.0.0.1", "port": 1})[2][0] == "AuthError"
    assert r.call("heartbeat", {"name": "s", "host": "127.0.0.1", "port": 1,
                                "__auth__": token})[3] is True
    ka.kill()
    # no /etc/aiorpc/token: the unit's placeholder credential is refused, the start fails
    credential("unset")
    p = subprocess.run(as_nobody, capture_output=True, text=True, timeout=10, env=env)
    assert p.returncode == 2 and "a token needs at least 16" in p.stderr, p.stderr
    # the setup the unit replaced: a root-owned chmod 600 token read by the dynamic user fails
    root_token = os.path.join(tempfile.mkdtemp(), "token")
    os.chmod(os.path.dirname(root_token), 0o755)
    with open(root_token, "w") as f:
        f.write(token)
    os.chmod(root_token, 0o600)
    p = subprocess.run(as_nobody[:-2] + ["--role=keepalive", "--auth-token-file", root_token],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "not readable" in p.stderr, p.stderr



def sanitized():
    with open(os.path.join(BUILD, "meson-info", "intro-buildoptions.json")) as f:
        opts = {o["name"]: o["value"] for o in json.load(f)}
    return opts.get("b_sanitize", "none") not in ("none", "")


def test_out_of_tree_build_with_pkg_config_only():
    """Installs into a temporary root, then builds and runs docs/examples against it with
    nothing but `pkg-config --cflags --libs aiorpc` (the shared library, by SONAME)."""
    if sanitized():
        print("skipped here: a sanitizer build's library needs the sanitizer runtime; the "
              "plain build runs this test")
        return
    dest = tempfile.mkdtemp()
    r = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--destdir", dest,
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pcs = [os.path.join(root, f) for root, _, fs in os.walk(dest) for f in fs if f == "aiorpc.pc"]
    assert len(pcs) == 1, pcs
    pc_dir = os.path.dirname(pcs[0])
    prefix = open(pcs[0]).read().split("prefix=", 1)[1].split("\n", 1)[0]
    env = dict(os.environ, PKG_CONFIG_PATH=pc_dir)
    flags = subprocess.run(["pkg-config", "--define-variable=prefix=" + dest + prefix,
                            "--cflags", "--libs", "aiorpc"], capture_output=True, text=True,
                           env=env, check=True).stdout.split()
    libdir = next(f[2:] for f in flags if f.startswith("-L"))
    so = [f for f in os.listdir(libdir) if f.startswith("libaiorpc.so.")]
    assert any(f == "libaiorpc.so.0" for f in so), so  # versioned, with its SONAME link
    assert os.path.exists(os.path.join(libdir, "libaiorpc.a"))
    src = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples")
    out = os.path.join(dest, "aggregation")
    cxx = os.environ.get("CXX", "c++")
    r = subprocess.run([cxx, "-O0", os.path.join(src, "aggregation.cc"), "-o", out, *flags],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    r = subprocess.run([out], capture_output=True, text=True, timeout=30, env=run_env)
    assert r.returncode == 0 and '"price": 30' in r.stdout, (r.stdout, r.stderr)
    linked = subprocess.run(["ldd", out], capture_output=True, text=True, env=run_env).stdout
    assert "libaiorpc.so.0" in linked, linked
    # docs/embedding.md's two lines: the rpath (runs with no LD_LIBRARY_PATH), and the archive
    # linked in with its dependencies shared (no libaiorpc.so at all).
    def pc(*args):
        return subprocess.run(["pkg-config", "--define-variable=prefix=" + dest + prefix, *args],
                              capture_output=True, text=True, env=env, check=True).stdout.split()
    rpath = os.path.join(dest, "aggregation_rpath")
    static = os.path.join(dest, "aggregation_static")
    libdir_pc = pc("--variable=libdir", "aiorpc")[0]
    for exe, link in ((rpath, [*pc("--cflags", "--libs", "aiorpc"), f"-Wl,-rpath,{libdir_pc}"]),
                      (static, [*pc("--cflags", "aiorpc"), f"{libdir_pc}/libaiorpc.a",
                                *pc("--libs", "msgpack", "fmt", "libcares", "libcurl", "openssl"),
                                "-lev"])):
        r = subprocess.run([cxx, "-O0", os.path.join(src, "aggregation.cc"), "-o", exe, *link],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (link, r.stderr[-3000:])
        r = subprocess.run([exe], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and '"price": 30' in r.stdout, (exe, r.stdout, r.stderr)
    linked = subprocess.run(["ldd", static], capture_output=True, text=True).stdout
    assert "libaiorpc" not in linked and "libssl" in linked, linked
    # a role module built against the installed headers, run by the installed aiorpcd
    cflags = [f for f in flags if not f.startswith(("-L", "-l"))]
    mod = os.path.join(dest, "libgreeter.so")
    r = subprocess.run([cxx, "-O0", "-shared", "-fPIC", os.path.join(src, "module", "greeter.cc"),
                        "-o", mod, *cflags], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    aiorpcd = os.path.join(dest + prefix, "bin", "aiorpcd")
    g = Proc([aiorpcd, f"--module={mod}", "--role=greeter", "--bind", "127.0.0.1:0",
              "--greeting", "salut"])
    assert Raw(g).call("greet", ["zoe"])[3] == "salut, zoe"



def test_as_a_meson_subproject_it_is_one_dependency_and_nothing_else():
    if sanitized():
        print("skipped here: the plain build runs this test")
        return
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "subprojects"))
    here = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    os.symlink(here, os.path.join(root, "subprojects", "aiorpc"))
    with open(os.path.join(root, "meson.build"), "w") as f:
        f.write("project('user', 'cpp', default_options : ['cpp_std=c++20'])\n"
                "dep = dependency('aiorpc')\n"
                "executable('user_app', 'main.cc', dependencies : dep)\n")
    with open(os.path.join(root, "main.cc"), "w") as f:
        f.write("#include <aiorpc/aiorpc.h>\nint main() { aiorpc::core::Loop loop; return 0; }\n")
    r = subprocess.run(["meson", "setup", os.path.join(root, "b"), root], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    targets = json.loads(subprocess.run(["meson", "introspect", "--targets",
                                         os.path.join(root, "b")],
                                        capture_output=True, text=True, check=True).stdout)
    names = {t["name"] for t in targets}
    assert "user_app" in names and "aiorpc" in names, names
    assert not names & {"aiorpcd", "aiorpc_cli", "core_tests", "rpc_tests", "thread_pool",
                        "epoll_echo", "rpc_fuzz_replay"}, names
    tests = json.loads(subprocess.run(["meson", "introspect", "--tests", os.path.join(root, "b")],
                                      capture_output=True, text=True, check=True).stdout)
    assert tests == [], [t["name"] for t in tests]


if __name__ == "__main__":  # also runs without pytest: python3 FILE [test_name...]
    run(globals())
