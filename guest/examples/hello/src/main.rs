//! A native micro-VM guest: greets, echoes its arguments and stdin, calls a host function if
//! the embedder registered one named `greet`, and exits with 0.
#![no_std]
#![no_main]

extern crate alloc;

use sandcell_guest::{args, env_var, host_call, println, read_stdin, HostCallError};

sandcell_guest::entry!(main);

fn main() -> i32 {
    println!("Hello from a micro-VM!");
    for (i, a) in args().enumerate().skip(1) {
        println!("arg {i}: {a}");
    }
    if let Some(v) = env_var("GREETING") {
        println!("GREETING={v}");
    }
    let mut input = alloc::vec![0u8; 4096];
    let n = read_stdin(&mut input);
    if n > 0 {
        println!("stdin: {}", core::str::from_utf8(&input[..n]).unwrap_or("(not UTF-8)"));
    }
    let mut out = [0u8; 256];
    match host_call("greet", b"guest", &mut out) {
        Ok(n) => println!("host says: {}", core::str::from_utf8(&out[..n]).unwrap_or("?")),
        Err(HostCallError::NotFound) => {}
        Err(e) => println!("host call failed: {e:?}"),
    }
    0
}
