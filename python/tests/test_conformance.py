"""The Rust conformance suite's behaviours (tests/all/conformance.rs), through the Python package,
on every backend available here."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import sandcell
from conftest import Fixture


def test_hello_passes_args_stdin_env_and_separates_streams(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        out = fx.run(sb, "hello", "one", "two words", stdin=b"piped in", env={"GREETING": "hi"})
    assert out.status == "exited" and out.exit_code == 0 and out.ok, out
    text = out.stdout.decode()
    assert "Hello from testguest" in text
    assert "args: one two words" in text
    assert "stdin: piped in" in text
    assert "GREETING=hi" in text
    assert out.stderr == b"a line on stderr\n"
    assert out.usage.wall > 0
    assert out.signal is None and out.trap is None


def test_exit_codes_are_exact(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        for code in (0, 1, 3, 42, 255):
            out = fx.run(sb, "exit", str(code))
            assert (out.status, out.exit_code) == ("exited", code)


def test_environment_is_only_what_policy_and_program_give(fx: Fixture) -> None:
    with fx.sandbox(env={"FROM_POLICY": "p", "BOTH": "policy"}) as sb:
        env = fx.run(sb, "env", env={"BOTH": "program"}).stdout.decode()
    assert "FROM_POLICY=p\n" in env
    assert "BOTH=program\n" in env
    assert "BOTH=policy" not in env
    for host_var in ("HOME=", "PATH=/root", "CARGO", "USER="):
        assert not any(line.startswith(host_var) for line in env.splitlines()), env


def test_wall_clock_timeout_stops_a_spinning_guest(fx: Fixture) -> None:
    with fx.sandbox(timeout="300ms") as sb:
        started = time.monotonic()
        out = fx.run(sb, "spin")
    assert out.status == "timeout"
    assert time.monotonic() - started < 5
    assert out.usage.wall >= 0.3


def test_wall_clock_timeout_stops_a_sleeping_guest(fx: Fixture) -> None:
    with fx.sandbox(timeout=0.3) as sb:
        started = time.monotonic()
        out = fx.run(sb, "sleep", "60000")
    assert out.status == "timeout"
    assert time.monotonic() - started < 5


def test_cpu_time_limit_stops_a_spinning_guest(fx: Fixture) -> None:
    with fx.sandbox(cpu_time="300ms") as sb:
        out = fx.run(sb, "spin")
    assert out.status == "cpu_limit"
    assert out.detail == "cpu time limit reached"
    assert out.usage.cpu >= 0.25


def test_sandbox_interrupt_stops_runs_in_progress_from_another_thread(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        result = {}
        t = threading.Thread(target=lambda: result.update(out=fx.run(sb, "spin")))
        t.start()
        # The run may not have started when the first interrupt comes (it only stops runs in
        # progress), so keep interrupting until the thread is done; the timeout is 30 s.
        deadline = time.monotonic() + 20
        while t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
            sb.interrupt()
        t.join(5)
        assert not t.is_alive()
        assert result["out"].status == "interrupted"
        # The sandbox's interrupt does not affect later runs.
        assert fx.run(sb, "exit", "0").ok


def test_a_run_handle_triggered_before_the_run_stops_it_at_once(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        handle = sandcell.Interrupt()
        handle.trigger()
        started = time.monotonic()
        out = fx.run(sb, "spin", interrupt=handle)
    assert out.status == "interrupted"
    assert time.monotonic() - started < 5


def test_output_flood_is_capped(fx: Fixture) -> None:
    cap = 1 << 20
    with fx.sandbox(max_output=cap) as sb:
        out = fx.run(sb, "flood", "1073741824", "both")
    assert out.status == "output_limit"
    assert len(out.stdout) == cap
    assert len(out.stderr) <= cap
    assert set(out.stdout) == {ord("x")}


def test_output_within_the_cap_is_complete(fx: Fixture) -> None:
    with fx.sandbox(max_output="1M") as sb:
        out = fx.run(sb, "flood", "655360")
    assert out.ok
    assert len(out.stdout) == 655360


def test_streamed_output_matches_captured_output(fx: Fixture) -> None:
    seen = {"out": b"", "err": b""}

    def on_out(chunk: bytes) -> None:
        seen["out"] += chunk

    def on_err(chunk: bytes) -> None:
        seen["err"] += chunk

    with fx.sandbox() as sb:
        out = fx.run(sb, "hello", "streamed", on_stdout=on_out, on_stderr=on_err)
    assert seen["out"] == out.stdout and out.stdout
    assert seen["err"] == out.stderr


def test_memory_bomb_ends_with_memory_limit(fx: Fixture) -> None:
    with fx.sandbox(memory="64M") as sb:
        assert fx.run(sb, "alloc", "1024").status == "memory_limit"
        out = fx.run(sb, "alloc", "16")
        assert out.ok, out.stderr


def test_non_utf8_output_keeps_every_byte(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        assert fx.run(sb, "bytes").stdout == b"ok \xff\xfe\x00 end"


@pytest.fixture
def dirs(tmp_path: Path):
    ro = tmp_path / "ro"
    (ro / "sub").mkdir(parents=True)
    (ro / "data.txt").write_text("read-only data")
    rw = tmp_path / "rw"
    rw.mkdir()
    (rw / "existing.txt").write_text("old")
    return ro, rw


def test_read_only_mount_is_readable_and_refuses_every_write(fx: Fixture, dirs) -> None:
    ro, _ = dirs
    with fx.sandbox(mounts=[(str(ro), "/data")]) as sb:
        assert fx.run(sb, "read", "/data/data.txt").stdout == b"ok read-only data\n"
        assert fx.run(sb, "ls", "/data").stdout == b"ok data.txt,sub\n"
        for mode, path in [
            ("write", "/data/data.txt"),
            ("write", "/data/new.txt"),
            ("create", "/data/created.txt"),
            ("remove", "/data/data.txt"),
            ("mkdir", "/data/newdir"),
        ]:
            out = fx.run(sb, mode, path)
            assert out.stdout.startswith(b"err"), (mode, path, out.stdout)
    assert (ro / "data.txt").read_text() == "read-only data"
    assert not any((ro / n).exists() for n in ("new.txt", "created.txt", "newdir"))


def test_read_write_mount_writes_reach_the_host(fx: Fixture, dirs) -> None:
    _, rw = dirs
    with fx.sandbox(mounts=[sandcell.Mount(str(rw), "/work", writable=True)]) as sb:
        assert fx.run(sb, "write", "/work/out.txt", "written by the guest").stdout == b"ok\n"
        assert (rw / "out.txt").read_text() == "written by the guest"
        assert fx.run(sb, "remove", "/work/existing.txt").stdout == b"ok\n"
    assert not (rw / "existing.txt").exists()


def test_nothing_outside_the_mounts_is_reachable(fx: Fixture, dirs, tmp_path: Path) -> None:
    ro, _ = dirs
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    secret = secret_dir / "secret.txt"
    secret.write_text("host secret")
    os.symlink(secret, ro / "abs-link")
    os.symlink("../../../../../../../../../.." + str(secret), ro / "rel-link")
    os.symlink(secret_dir, ro / "dir-link")
    with fx.sandbox(mounts=[(str(ro), "/data")]) as sb:
        for path in [
            str(secret),
            "/data/../../../../../../.." + str(secret),
            "/data/abs-link",
            "/data/rel-link",
            "/data/dir-link/secret.txt",
            "/etc/shadow",
        ]:
            out = fx.run(sb, "read", path).stdout
            assert b"host secret" not in out, path
            assert out.startswith(b"err"), (path, out)


def test_one_sandbox_runs_many_programs_from_many_threads(fx: Fixture) -> None:
    errors = []
    with fx.sandbox() as sb:

        def worker(t: int) -> None:
            try:
                for i in range(5):
                    out = fx.run(sb, "hello", f"t{t}-i{i}", stdin=f"in-{t}-{i}".encode())
                    text = out.stdout.decode()
                    assert out.ok and f"args: t{t}-i{i}" in text and f"stdin: in-{t}-{i}" in text, text
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_unreadable_program_is_an_error_not_an_outcome(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        with pytest.raises(sandcell.InvalidProgramError, match="/no/such/program"):
            sb.run("/no/such/program" if fx.backend == "process" else "/no/such/program.wasm")


def test_working_directory_is_set_or_refused(fx: Fixture, dirs) -> None:
    _, rw = dirs
    with fx.sandbox(mounts=[(str(rw), "/work", True)]) as sb:
        if fx.backend == "process":
            assert fx.run(sb, "cwd", cwd="/work").stdout == b"/work\n"
        else:
            # WASI preview 1 has no working directory: refused loudly rather than ignored.
            with pytest.raises(sandcell.InvalidProgramError, match="working directory"):
                fx.run(sb, "cwd", cwd="/work")


def test_stdin_streams_from_a_file_object_as_input_arrives(fx: Fixture) -> None:
    # The second line is written only after the guest has echoed the first: a backend that
    # waited for the end of the input would never see it (the run would time out).
    r, w = os.pipe()
    echoed = threading.Event()

    def feed() -> None:
        os.write(w, b"first line\n")
        echoed.wait(20)
        os.write(w, b"second line\n")
        os.close(w)

    def on_stdout(chunk: bytes) -> None:
        if b"first" in chunk:
            echoed.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    with fx.sandbox() as sb, os.fdopen(r, "rb", buffering=0) as stdin:
        out = fx.run(sb, "echo", stdin=stdin, on_stdout=on_stdout, timeout=25)
    feeder.join()
    assert echoed.is_set()
    assert out.status == "exited" and out.stdout == b"first line\nsecond line\n", out


def test_stdin_from_a_regular_file_and_bad_stdin_types(fx: Fixture, tmp_path: Path) -> None:
    data = tmp_path / "input"
    data.write_bytes(b"from a file")
    with fx.sandbox() as sb:
        with open(data, "rb") as f:
            assert fx.run(sb, "cat", stdin=f).stdout == b"from a file"
        with pytest.raises(TypeError, match="stdin"):
            fx.run(sb, "cat", stdin=12.5)  # type: ignore[arg-type]


def test_a_prepared_program_runs_many_times_with_each_runs_own_input(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        with sb.prepare(fx.program, ["hello", "one"], env={"GREETING": "hi"}, name="testguest") as prepared:
            assert isinstance(prepared, sandcell.Prepared)
            for i in range(3):
                out = prepared.run(stdin=f"in-{i}")
                text = out.stdout.decode()
                assert out.status == "exited" and f"stdin: in-{i}" in text and "args: one" in text, out
                assert "GREETING=hi" in text
            chunks = []
            out = prepared.run(stdin=b"streamed", on_stdout=chunks.append, timeout=20)
            assert out.ok and b"stdin: streamed" in b"".join(chunks)
        assert prepared.closed
        with pytest.raises(sandcell.InvalidArgumentError, match="closed"):
            prepared.run()
        spin = sb.prepare(fx.program, ["spin"], name="testguest")
        assert spin.run(timeout=0.2).status == "timeout"
        spin.close()


def test_prepare_options_pool_where_the_backend_keeps_one_and_are_refused_elsewhere(fx: Fixture) -> None:
    with fx.sandbox() as sb:
        with sb.prepare(fx.program, ["hello"], name="testguest") as plain:
            assert plain.run().ok
            stats = plain.pool_stats
            if fx.backend == "microvm":
                assert stats is not None and stats["hits"] == 1 and stats["idle"] == 2, stats
            else:
                assert stats is None
        if fx.backend == "microvm":
            with sb.prepare(fx.program, ["hello"], name="testguest", pool_size=2, idle_timeout="250ms") as pooled:
                for i in range(3):
                    out = pooled.run(stdin=f"in-{i}")
                    assert out.ok and f"stdin: in-{i}" in out.stdout.decode(), out
                assert pooled.pool_stats is not None and pooled.pool_stats["hits"] == 3
                deadline = time.monotonic() + 5
                while pooled.pool_stats["idle"] and time.monotonic() < deadline:  # type: ignore[index]
                    time.sleep(0.05)
                assert pooled.pool_stats == {**pooled.pool_stats, "idle": 0}  # type: ignore[dict-item]
                assert pooled.pool_stats["evictions"] >= 1  # type: ignore[index]
            # Prepared until ready: the start-up runs once; each run continues after the guest
            # wrote /run/sandcell/ready, with its own stdin.
            with sb.prepare(fx.program, ["ready"], name="testguest", until_ready=True) as ready:
                for text in ("one", "two"):
                    out = ready.run(stdin=text).stdout.decode()
                    assert out.startswith(f'ready Ok(()), input "{text}", table 49950000, run 1'), out
            # A program that never says it is ready cannot be prepared until ready.
            with pytest.raises(sandcell.InvalidProgramError, match="did not say it was ready"):
                sb.prepare(fx.program, ["hello"], until_ready=True)
        else:
            with pytest.raises(sandcell.UnenforceableError, match="pool"):
                sb.prepare(fx.program, ["hello"], pool_size=2)
        with pytest.raises(sandcell.InvalidArgumentError, match="pool_size"):
            sb.prepare(fx.program, ["hello"], pool_size=-1)
        with pytest.raises(sandcell.InvalidArgumentError, match="timeout"):
            sb.prepare(fx.program, ["hello"], idle_timeout=0)


def test_snapshot_files_are_saved_and_loaded_where_the_backend_takes_snapshots(fx: Fixture, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    snap = tmp_path / "hello.snap"
    with fx.sandbox(cache_dir=str(cache)) as sb, sb.prepare(fx.program, ["hello"], name="testguest") as prepared:
        if fx.backend != "microvm":
            with pytest.raises(sandcell.UnenforceableError, match="snapshot"):
                prepared.save_snapshot(snap)
            return
        prepared.save_snapshot(snap)
    with fx.sandbox(cache_dir=str(cache)) as other:
        with other.prepare(fx.program, ["hello"], name="testguest", snapshot_file=snap) as loaded:
            out = loaded.run(stdin="from a file")
            assert out.ok and "stdin: from a file" in out.stdout.decode(), out
        data = bytearray(snap.read_bytes())
        data[-5] ^= 0xFF
        snap.write_bytes(bytes(data))
        with pytest.raises(sandcell.InvalidProgramError, match="verify"):
            other.prepare(fx.program, ["hello"], name="testguest", snapshot_file=snap)


def test_prepared_runs_async(fx: Fixture) -> None:
    import asyncio

    async def main() -> sandcell.Outcome:
        with fx.sandbox() as sb, sb.prepare(fx.program, ["hello"], name="testguest") as prepared:
            return await prepared.run_async(stdin=b"async input")

    out = asyncio.run(main())
    assert out.ok and b"stdin: async input" in out.stdout, out


def test_stdin_from_a_socket_with_a_timeout_streams(fx: Fixture) -> None:
    # A socket with a timeout is non-blocking underneath: having nothing yet is not the end.
    import socket

    a, b = socket.socketpair()
    a.settimeout(5)

    def feed() -> None:
        time.sleep(0.1)
        b.sendall(b"late input")
        b.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    with fx.sandbox() as sb, a.makefile("rb", buffering=0) as stdin:
        out = fx.run(sb, "cat", stdin=stdin, timeout=20)
    feeder.join()
    a.close()
    assert out.ok and out.stdout == b"late input", out
