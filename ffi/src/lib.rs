//! The C ABI of sandcell (`include/sandcell.h`, `libsandcell.so`, `libsandcell.a`).
//!
//! Every exported function catches panics; every pointer argument is checked. Handles are
//! registered while alive, so a handle used after `*_free` (or freed twice) is refused with
//! `SANDCELL_ERROR_INVALID_ARGUMENT` instead of touching freed memory — as long as the use does
//! not race the free on another thread, which the header documents as the caller's bug.
//!
//! One module per concern. The order of the `mod` lines is the order of the header (cbindgen
//! reads them in this order): the constants, then the functions of errors, strings, the library,
//! policies, programs, sandboxes, interrupt handles and outcomes.
//!
//! - [`consts`]: every number of the ABI (versions, error kinds, statuses, streams, network
//!   policies, no-limit values).
//! - [`handle`]: the registry of live handles (register, check, borrow, release).
//! - [`error`]: error objects, the panic guard every fallible function runs in.
//! - [`util`]: strings and buffers in, out-parameters and strings out, static names.
//! - [`extensible`]: the structs that start with `size` (read and written within it).
//! - [`library`]: the version, the ABI version, the host probe.
//! - [`policy`], [`program`], [`sandbox`] (with the run options), [`interrupt`], [`outcome`].

#![allow(clippy::missing_safety_doc)]
#![warn(unsafe_op_in_unsafe_fn)]

// Not sorted: this order is the header's (rustfmt keeps items apart from one another).
mod consts;

mod handle;

mod error;

mod util;

mod extensible;

mod library;

mod policy;

mod program;

mod sandbox;

mod interrupt;

mod outcome;

#[doc(hidden)]
pub mod fuzz;
