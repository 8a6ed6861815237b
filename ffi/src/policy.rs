//! Policies: built from JSON or field by field.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::consts::*;
use crate::error::{from_sandcell, guard, invalid, Error, Result};
use crate::handle::{get, get_mut, register, release};
use crate::util::{out, out_string, string};

/// A policy (limits and permissions), built field by field or from JSON.
pub struct Policy(pub(crate) sandcell::Policy);

/// A new policy with the defaults (512 MiB memory, 16 MiB per output stream, 64 processes, 256
/// open files, no network, no mounts, no time limits).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_new(policy: *mut *mut Policy) -> *mut Error {
    guard(|| {
        let p = register(Policy(sandcell::Policy::default()), "policy");
        // SAFETY: checked out-parameter.
        unsafe { out(policy, p, "policy") }
    })
}

/// A policy from its JSON document (the schema of the README; unknown fields are refused).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_from_json(json: *const c_char, policy: *mut *mut Policy) -> *mut Error {
    guard(|| {
        // SAFETY: checked string.
        let text = unsafe { string(json, "json")? };
        let parsed = sandcell::Policy::from_json(text).map_err(from_sandcell)?;
        if policy.is_null() {
            return Err(invalid("the out-parameter `policy` is NULL"));
        }
        let p = register(Policy(parsed), "policy");
        // SAFETY: checked out-parameter.
        unsafe { out(policy, p, "policy") }
    })
}

/// The policy as a JSON document. Free with sandcell_string_free().
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_to_json(policy: *const Policy, json: *mut *mut c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and out-parameter.
        unsafe {
            let p = get(policy, "policy", "policy")?;
            out_string(json, p.0.to_json(), "json")
        }
    })
}

/// Applies `f` to a live policy.
unsafe fn edit_policy(policy: *mut Policy, f: impl FnOnce(&mut sandcell::Policy) -> Result<()>) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        f(&mut unsafe { get_mut(policy, "policy", "policy")? }.0)
    })
}

// The numeric setters: 0 means unset, the value of a new policy (the library's default);
// SANDCELL_UNLIMITED (SANDCELL_UNLIMITED_U32 for the uint32_t ones) means no limit; anything else
// is the value. A limit of exactly zero, where it means something, has its own function.

fn default_policy() -> sandcell::Policy {
    sandcell::Policy::default()
}

fn limit(v: u64, default: Option<u64>) -> Option<u64> {
    match v {
        0 => default,
        SANDCELL_UNLIMITED => None,
        v => Some(v),
    }
}

fn limit_u32(v: u32, default: Option<u32>) -> Option<u32> {
    match v {
        0 => default,
        SANDCELL_UNLIMITED_U32 => None,
        v => Some(v),
    }
}

fn limit_ms(ms: u64, default: Option<Duration>) -> Option<Duration> {
    match ms {
        0 => default,
        SANDCELL_UNLIMITED => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// Memory cap in bytes. 0: the default (512 MiB); SANDCELL_UNLIMITED: no cap.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_memory(policy: *mut Policy, bytes: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.memory = limit(bytes, default_policy().memory);
            Ok(())
        })
    }
}

/// Wall-clock limit in milliseconds. 0: the default (none); SANDCELL_UNLIMITED: none.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_timeout_ms(policy: *mut Policy, ms: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.timeout = limit_ms(ms, default_policy().timeout);
            Ok(())
        })
    }
}

/// CPU-time limit in milliseconds. 0: the default (none); SANDCELL_UNLIMITED: none.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_cpu_time_ms(policy: *mut Policy, ms: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.cpu_time = limit_ms(ms, default_policy().cpu_time);
            Ok(())
        })
    }
}

/// Instruction budget for wasm guests. 0: the default (unmetered); SANDCELL_UNLIMITED: unmetered.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_fuel(policy: *mut Policy, fuel: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.fuel = limit(fuel, default_policy().fuel);
            Ok(())
        })
    }
}

/// CPUs the guest may use. 0: the default (unset: the backend's own); SANDCELL_UNLIMITED_U32:
/// unset.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_cpus(policy: *mut Policy, cpus: u32) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.cpus = limit_u32(cpus, default_policy().cpus);
            Ok(())
        })
    }
}

/// Maximum processes (and threads). 0: the default (64); SANDCELL_UNLIMITED_U32: no limit.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_processes(policy: *mut Policy, n: u32) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_processes = limit_u32(n, default_policy().max_processes);
            Ok(())
        })
    }
}

/// Maximum open files. 0: the default (256); SANDCELL_UNLIMITED: no limit.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_open_files(policy: *mut Policy, n: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_open_files = limit(n, default_policy().max_open_files);
            Ok(())
        })
    }
}

/// Maximum size of a file the guest writes. 0: the default (no limit); SANDCELL_UNLIMITED: no
/// limit. For a limit of zero (no file may grow), sandcell_policy_set_max_file_size_zero().
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_file_size(policy: *mut Policy, bytes: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_file_size = limit(bytes, default_policy().max_file_size);
            Ok(())
        })
    }
}

/// Sets the maximum size of a file the guest writes to zero: no file may grow.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_file_size_zero(policy: *mut Policy) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_file_size = Some(0);
            Ok(())
        })
    }
}

/// Cap on each of stdout and stderr, in bytes. 0: the default (16 MiB); SANDCELL_UNLIMITED: no
/// cap. For a cap of zero (any output ends the run), sandcell_policy_set_max_output_zero().
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_output(policy: *mut Policy, bytes: u64) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_output = if bytes == 0 { default_policy().max_output } else { bytes };
            Ok(())
        })
    }
}

/// Sets the cap on stdout and stderr to zero bytes: the first byte of output ends the run with
/// SANDCELL_STATUS_OUTPUT_LIMIT.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_max_output_zero(policy: *mut Policy) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.max_output = 0;
            Ok(())
        })
    }
}

/// Run even when a field cannot be enforced (the outcome lists what was skipped).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_best_effort(policy: *mut Policy, yes: bool) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.best_effort = yes;
            Ok(())
        })
    }
}

/// SANDCELL_NETWORK_NONE or SANDCELL_NETWORK_LOOPBACK.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_network(policy: *mut Policy, network: u32) -> *mut Error {
    // SAFETY: `edit_policy` checks the handle.
    unsafe {
        edit_policy(policy, |p| {
            p.network = match network {
                SANDCELL_NETWORK_NONE => sandcell::Network::None,
                SANDCELL_NETWORK_LOOPBACK => sandcell::Network::Loopback,
                other => return Err(invalid(format!("unknown network policy {other}"))),
            };
            Ok(())
        })
    }
}

/// Process backend: the host directories mounted read-only so that dynamically linked programs
/// run (`count` paths; `count` 0 mounts none). Other backends refuse a non-empty list.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_system_dirs(
    policy: *mut Policy,
    dirs: *const *const c_char,
    count: usize,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle, array and strings.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            let list = if count == 0 {
                &[][..]
            } else {
                if dirs.is_null() {
                    return Err(invalid(format!("`dirs` is NULL but `count` is {count}")));
                }
                if count > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
                    return Err(invalid("`count` overflows"));
                }
                std::slice::from_raw_parts(dirs, count)
            };
            let mut paths = Vec::with_capacity(list.len());
            for (i, d) in list.iter().enumerate() {
                paths.push(std::path::PathBuf::from(string(*d, &format!("dirs[{i}]"))?));
            }
            p.0.system_dirs = Some(paths);
        }
        Ok(())
    })
}

/// Process backend: back to the default system directories (/usr, /bin, /lib*, ...).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_default_system_dirs(policy: *mut Policy) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        unsafe { get_mut(policy, "policy", "policy")? }.0.system_dirs = None;
        Ok(())
    })
}

/// Makes a host directory visible at `guest_path`, read-only unless `writable`.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_add_mount(
    policy: *mut Policy,
    host_path: *const c_char,
    guest_path: *const c_char,
    writable: bool,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and strings.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            let host = string(host_path, "host_path")?;
            let guest = string(guest_path, "guest_path")?;
            p.0.mounts.push(sandcell::Mount { host: host.into(), guest: guest.into(), writable });
        }
        Ok(())
    })
}

/// Sets an environment variable of every program.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_set_env(
    policy: *mut Policy,
    key: *const c_char,
    value: *const c_char,
) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and strings.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            p.0.env.insert(string(key, "key")?.to_owned(), string(value, "value")?.to_owned());
        }
        Ok(())
    })
}

/// Denies a system call (by name) on top of the process backend's allow-list.
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_deny_syscall(policy: *mut Policy, name: *const c_char) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle and string.
        unsafe {
            let p = get_mut(policy, "policy", "policy")?;
            p.0.deny_syscalls.push(string(name, "name")?.to_owned());
        }
        Ok(())
    })
}

/// Checks the policy now (sandcell_sandbox_new() checks it too).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_validate(policy: *const Policy) -> *mut Error {
    guard(|| {
        // SAFETY: checked handle.
        let p = unsafe { get(policy, "policy", "policy")? };
        p.0.validate().map_err(from_sandcell)
    })
}

/// Frees a policy (NULL is fine).
#[no_mangle]
pub unsafe extern "C" fn sandcell_policy_free(policy: *mut Policy) {
    // SAFETY: `release` checks the registry.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { release(policy, "policy") }));
}
