//! One guest program with many modes, used by sandcell's tests on every backend.
//! `testguest MODE [ARGS...]`; results are printed as plain lines so tests can match them.

use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("hello");
    let rest = &args[args.len().min(2)..];
    match mode {
        "hello" => hello(rest),
        "exit" => std::process::exit(num(rest, 0) as i32),
        "cat" => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input).unwrap();
            std::io::stdout().write_all(&input).unwrap();
        }
        // Each chunk of stdin written back as soon as it is read (streamed input).
        "echo" => {
            let mut buf = [0u8; 65536];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&buf[..n]).unwrap();
                        out.flush().unwrap();
                    }
                }
            }
        }
        // A start-up (a table computed, a file kept open with `keep-open`), "ready" written to
        // /run/sandcell/ready, then per run: stdin, the start-up's state, this run's count, and
        // fresh random bytes.
        "ready" => {
            static mut RUNS: u32 = 0;
            print!("before ready (discarded when prepared until ready)\n");
            std::io::stdout().flush().unwrap();
            let table: Vec<u64> = (0..100_000u64).map(|i| i.wrapping_mul(2654435761) % 1000).collect();
            let kept = rest.first().is_some_and(|a| a == "keep-open").then(|| std::fs::File::open("/run/sandcell").unwrap());
            let written = std::fs::write("/run/sandcell/ready", b"ready");
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).unwrap();
            // SAFETY: one thread.
            let runs = unsafe {
                RUNS += 1;
                RUNS
            };
            let mut random = [0u8; 8];
            getrandom(&mut random);
            println!(
                "ready {:?}, input {input:?}, table {}, run {runs}, random {}, kept {}",
                written.map_err(|e| e.kind()),
                table.iter().sum::<u64>(),
                random.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                kept.is_some()
            );
        }
        "env" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            for (k, v) in vars {
                println!("{k}={v}");
            }
        }
        "read" => match std::fs::read(&rest[0]) {
            Ok(data) => {
                print!("ok ");
                std::io::stdout().write_all(&data).unwrap();
                println!();
            }
            Err(e) => println!("err {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0)),
        },
        "write" => match std::fs::write(&rest[0], rest.get(1).map(String::as_str).unwrap_or("x")) {
            Ok(()) => println!("ok"),
            Err(e) => println!("err {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0)),
        },
        "create" => match std::fs::OpenOptions::new().write(true).create(true).open(&rest[0]) {
            Ok(_) => println!("ok"),
            Err(e) => println!("err {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0)),
        },
        "remove" => match std::fs::remove_file(&rest[0]) {
            Ok(()) => println!("ok"),
            Err(e) => println!("err {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0)),
        },
        // `link sym DIRFD TARGET NAME`: the symlink NAME (in the directory descriptor DIRFD) to
        // TARGET, with the raw WASI call (std's is unstable); `link hard TARGET NAME`: a hard link.
        "link" => {
            let made = if rest[0] == "sym" {
                symlink_at(rest[1].parse().unwrap_or(0), &rest[2], &rest[3])
            } else {
                std::fs::hard_link(&rest[1], &rest[2])
            };
            match made {
                Ok(()) => println!("ok"),
                Err(e) => println!("err {e}"),
            }
        }
        // `links N DIR`: N hard links of DIR/f; prints how many were made.
        "links" => {
            let n: usize = rest[0].parse().unwrap_or(1);
            let made = (0..n).filter(|i| std::fs::hard_link(format!("{}/f", rest[1]), format!("{}/l{i}", rest[1])).is_ok()).count();
            println!("made {made}");
        }
        "mkdir" => match std::fs::create_dir(&rest[0]) {
            Ok(()) => println!("ok"),
            Err(e) => println!("err {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0)),
        },
        "ls" => match std::fs::read_dir(&rest[0]) {
            Ok(entries) => {
                let mut names: Vec<String> =
                    entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                println!("ok {}", names.join(","));
            }
            Err(e) => println!("err {:?} {}", e.kind(), e.raw_os_error().unwrap_or(0)),
        },
        "openfiles" => {
            // Opens the same file until it fails; prints how many opens succeeded.
            let mut files = Vec::new();
            loop {
                match std::fs::File::open(&rest[0]) {
                    Ok(f) => files.push(f),
                    Err(e) => {
                        println!("opened {} then {:?}", files.len(), e.kind());
                        break;
                    }
                }
                if files.len() >= 100_000 {
                    println!("opened {} without limit", files.len());
                    break;
                }
            }
        }
        "manyfiles" => {
            // Creates, writes and closes N distinct files in DIR, one at a time.
            let n = num(&rest[1..], 100);
            for i in 0..n {
                if let Err(e) = std::fs::write(format!("{}/f{i}", rest[0]), "x") {
                    println!("failed at {i}: {:?}", e.kind());
                    return;
                }
            }
            println!("created {n}");
        }
        "bigfile" => {
            // Writes up to N bytes to PATH in 64 KiB chunks; prints how far it got.
            let mut f = std::fs::File::create(&rest[0]).unwrap();
            let total = num(&rest[1..], 0);
            let chunk = vec![b'z'; 65536];
            let mut written = 0u64;
            while written < total {
                match f.write(&chunk) {
                    Ok(n) => written += n as u64,
                    Err(e) => {
                        println!("wrote {written} then {:?}", e.kind());
                        return;
                    }
                }
            }
            println!("wrote {written}");
        }
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "sleep" => std::thread::sleep(std::time::Duration::from_millis(num(rest, 1000))),
        "alloc" => {
            // Allocates N MiB in 1 MiB steps, touching every page; prints progress.
            let mib = num(rest, 64);
            let mut blocks = Vec::new();
            for i in 0..mib {
                let mut b = vec![0u8; 1 << 20];
                for p in (0..b.len()).step_by(4096) {
                    b[p] = i as u8;
                }
                blocks.push(b);
            }
            println!("allocated {mib} MiB");
        }
        "flood" => {
            // Writes N bytes to stdout (and stderr with "both").
            let total = num(rest, 1 << 30);
            let both = rest.get(1).is_some_and(|s| s == "both");
            let chunk = vec![b'x'; 65536];
            let mut written = 0u64;
            let mut out = std::io::stdout().lock();
            let mut err = std::io::stderr().lock();
            while written < total {
                if out.write_all(&chunk).is_err() {
                    break;
                }
                if both && err.write_all(&chunk).is_err() {
                    break;
                }
                written += chunk.len() as u64;
            }
        }
        "fib" => println!("{}", fib(num(rest, 30))),
        "raise" => {
            // Raises signal N (9 unless given; WASI and Linux share the numbers up to 15).
            raise(num(rest, 9) as i32);
            println!("survived raise");
        }
        "panic" => panic!("the guest panicked on purpose"),
        "stderr" => eprintln!("to stderr"),
        "bytes" => std::io::stdout().write_all(b"ok \xff\xfe\x00 end").unwrap(),
        "cwd" => println!("{}", std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|e| format!("err {e}"))),
        other => {
            eprintln!("testguest: unknown mode `{other}`");
            std::process::exit(2);
        }
    }
}

fn hello(rest: &[String]) {
    println!("Hello from testguest");
    println!("args: {}", rest.join(" "));
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    println!("stdin: {input}");
    if let Ok(v) = std::env::var("GREETING") {
        println!("GREETING={v}");
    }
    eprintln!("a line on stderr");
}

#[cfg(target_os = "wasi")]
fn raise(signal: i32) {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn proc_raise(signal: i32) -> i32;
    }
    // SAFETY: a WASI call that takes a signal number.
    let errno = unsafe { proc_raise(signal) };
    println!("proc_raise: errno {errno}");
}

#[cfg(not(target_os = "wasi"))]
fn raise(signal: i32) {
    extern "C" {
        fn raise(signal: i32) -> i32;
    }
    // SAFETY: libc's raise takes a signal number.
    let rc = unsafe { raise(signal) };
    println!("raise: {rc}");
}

fn num(rest: &[String], default: u64) -> u64 {
    rest.first().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// Random bytes from the platform (WASI `random_get`, Linux `getrandom`).
fn getrandom(buf: &mut [u8]) {
    let mut f = std::fs::File::open("/dev/urandom").ok();
    if let Some(f) = f.as_mut() {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    // WASI guests have no /dev/urandom: std's HashMap keys come from random_get.
    use std::hash::{BuildHasher, Hasher};
    for chunk in buf.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
}

#[cfg(target_os = "wasi")]
fn symlink_at(dirfd: u32, target: &str, name: &str) -> std::io::Result<()> {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn path_symlink(old: *const u8, old_len: usize, fd: u32, new: *const u8, new_len: usize) -> u16;
    }
    // SAFETY: both strings are valid for their lengths during the call.
    let errno = unsafe { path_symlink(target.as_ptr(), target.len(), dirfd, name.as_ptr(), name.len()) };
    if errno == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("errno {errno}")))
    }
}

#[cfg(not(target_os = "wasi"))]
fn symlink_at(_: u32, target: &str, name: &str) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, name)
}
