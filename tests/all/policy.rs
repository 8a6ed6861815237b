//! Policy validation and refusal: invalid values are errors at build time, naming the field.

use std::time::Duration;

use sandcell::{BackendKind, Error, ErrorKind, Mount, Policy, SandboxBuilder};

use crate::common::TempDir;

fn build(kind: BackendKind, policy: Policy) -> Result<Box<dyn sandcell::Sandbox>, Error> {
    SandboxBuilder::new(kind).policy(policy).build()
}

#[test]
fn invalid_values_are_refused_naming_the_field() {
    let cases: Vec<(Policy, &str)> = vec![
        (Policy { memory: Some(0), ..Policy::default() }, "memory"),
        (Policy { timeout: Some(Duration::ZERO), ..Policy::default() }, "timeout"),
        (Policy { cpu_time: Some(Duration::ZERO), ..Policy::default() }, "cpu_time"),
        (Policy { cpus: Some(0), ..Policy::default() }, "cpus"),
        (Policy { max_processes: Some(0), ..Policy::default() }, "max_processes"),
        (Policy { mounts: vec![Mount::read_only("/tmp", "relative")], ..Policy::default() }, "mounts[0].guest"),
        (Policy { mounts: vec![Mount::read_only("/tmp", "/a/../b")], ..Policy::default() }, "mounts[0].guest"),
        (
            Policy {
                mounts: vec![Mount::read_only("/tmp", "/a"), Mount::read_only("/usr", "/a")],
                ..Policy::default()
            },
            "mounts[1].guest",
        ),
        (Policy { env: [("A=B".into(), "x".into())].into(), ..Policy::default() }, "env"),
        (Policy { deny_syscalls: vec!["not a name".into()], ..Policy::default() }, "deny_syscalls"),
    ];
    for (policy, field) in cases {
        let err = build(BackendKind::Wasm, policy).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidPolicy, "{err}");
        assert!(err.to_string().contains(field), "expected `{field}` in: {err}");
    }
}

#[test]
fn a_mount_of_a_missing_host_path_is_refused() {
    let err =
        build(BackendKind::Wasm, Policy { mounts: vec![Mount::read_only("/no/such/dir", "/d")], ..Policy::default() })
            .unwrap_err();
    assert!(err.to_string().contains("mounts[0].host") && err.to_string().contains("/no/such/dir"), "{err}");
}

#[test]
fn json_documents_round_trip_and_reject_unknown_fields() {
    let dir = TempDir::new("policy");
    let doc = format!(
        r#"{{"memory":"64M","timeout":"2s","cpu_time":1.5,"fuel":1000000,"max_output":"1M",
            "mounts":[{{"host":"{}","guest":"/data","writable":true}}],"env":{{"K":"V"}},"best_effort":false}}"#,
        dir.path().display()
    );
    let p = Policy::from_json(&doc).unwrap();
    assert_eq!(p.memory, Some(64 << 20));
    assert_eq!(p.cpu_time, Some(Duration::from_millis(1500)));
    assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);
    build(BackendKind::Wasm, p).unwrap();

    for bad in
        [r#"{"memory":"64M","colour":"blue"}"#, r#"{"mounts":[{"host":"/","guest":"/","mode":"rw"}]}"#, "[1,2]", "{"]
    {
        let err = Policy::from_json(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidPolicy, "{bad}: {err}");
    }
}

#[test]
fn system_dirs_are_refused_on_the_wasm_backend() {
    let err =
        build(BackendKind::Wasm, Policy { system_dirs: Some(vec!["/usr".into()]), ..Policy::default() }).unwrap_err();
    assert!(matches!(err, Error::Unenforceable { field: sandcell::PolicyField::SystemDirs, .. }), "{err}");
    build(BackendKind::Wasm, Policy { system_dirs: Some(vec![]), ..Policy::default() }).unwrap();
}

#[test]
fn every_error_message_says_what_to_do() {
    let err = build(BackendKind::Wasm, Policy { memory: Some(0), ..Policy::default() }).unwrap_err();
    assert!(err.to_string().contains("greater than 0"), "{err}");
}
