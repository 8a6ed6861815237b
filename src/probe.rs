//! What this host supports: probed once per process and cached.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::BackendKind;

/// Whether one backend can run on this host, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendSupport {
    /// The backend.
    pub backend: BackendKind,
    /// Whether sandboxes of this backend can be built here.
    pub available: bool,
    /// When unavailable: why, and how to fix it. When available: a one-line summary of the
    /// mechanisms it will use here.
    pub reason: String,
}

/// Flavour of hardware virtualization behind `/dev/kvm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvmFlavor {
    /// Intel VT-x (`kvm_intel`).
    VtX,
    /// AMD-V (`kvm_amd`).
    AmdV,
    /// PVM, pagetable-based nested virtualization without VT-x in the guest (`kvm_pvm`): guest
    /// user-mode code runs natively, guest kernel-mode code is emulated and very slow.
    Pvm,
    /// Something else (the module could not be identified).
    Unknown,
}

impl KvmFlavor {
    /// Short name: `vt-x`, `amd-v`, `pvm`, `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            KvmFlavor::VtX => "vt-x",
            KvmFlavor::AmdV => "amd-v",
            KvmFlavor::Pvm => "pvm",
            KvmFlavor::Unknown => "unknown",
        }
    }

    /// What the flavour means for micro-VM speed.
    pub fn speed_note(self) -> &'static str {
        match self {
            KvmFlavor::VtX | KvmFlavor::AmdV => {
                "hardware virtualization: guest code runs at native speed in every mode"
            }
            KvmFlavor::Pvm => {
                "PVM (nested, no VT-x): guest user-mode code runs natively, guest kernel-mode code is emulated \
                 (~1,500x slower) and a VM exit costs ~9-67 us; sandcell's kernel-less guests stay in user mode"
            }
            KvmFlavor::Unknown => "unknown KVM implementation",
        }
    }
}

/// cgroup layout of the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cgroups {
    /// Mount point of the cgroup v2 hierarchy, if any.
    pub v2_mount: Option<PathBuf>,
    /// Controllers enabled in the v2 hierarchy's root (`memory`, `pids`, `cpu`, ...).
    pub v2_controllers: Vec<String>,
    /// v1 controller mount points (`memory` → `/sys/fs/cgroup/memory`).
    pub v1: Vec<(String, PathBuf)>,
}

impl Cgroups {
    /// The mount point of a v1 controller.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1.iter().find(|(c, _)| c == controller).map(|(_, p)| p.as_path())
    }
}

/// Facts about the host that the backends depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostSupport {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Whether `/dev/kvm` can be opened read-write.
    pub kvm: bool,
    /// Why not, when it cannot.
    pub kvm_error: Option<String>,
    /// The KVM flavour, when present.
    pub kvm_flavor: Option<KvmFlavor>,
    /// Landlock ABI version, if Landlock is enabled.
    pub landlock_abi: Option<u32>,
    /// Whether seccomp filters are supported.
    pub seccomp: bool,
    /// Whether user namespaces may be created (sysctls allow them).
    pub user_namespaces: bool,
    /// cgroup layout.
    pub cgroups: Cgroups,
    /// Whether the current process runs as root (euid 0).
    pub root: bool,
}

/// The result of [`probe()`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Probe {
    /// Host facts.
    pub host: HostSupport,
    /// Each backend, in [`BackendKind::ALL`] order.
    pub backends: Vec<BackendSupport>,
}

impl Probe {
    /// Support for one backend.
    pub fn backend(&self, kind: BackendKind) -> &BackendSupport {
        self.backends.iter().find(|b| b.backend == kind).expect("every backend is probed")
    }

    /// JSON form, as `sandcell probe --json` prints it (see the `Serialize` impl).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a probe always serialises")
    }
}

/// `{"backends": [{"backend", "available", "reason"}...], "host": {"kernel", "kvm",
/// "kvm_flavor", "kvm_note", "landlock_abi", "seccomp", "user_namespaces", "root", "cgroup_v2",
/// "cgroup_v2_controllers", "cgroup_v1"}}`.
impl serde::Serialize for Probe {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("backends", &self.backends)?;
        map.serialize_entry("host", &self.host)?;
        map.end()
    }
}

impl serde::Serialize for BackendSupport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("backend", self.backend.name())?;
        map.serialize_entry("available", &self.available)?;
        map.serialize_entry("reason", &self.reason)?;
        map.end()
    }
}

impl serde::Serialize for HostSupport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let note = match (self.kvm_flavor, &self.kvm_error) {
            (Some(f), _) => Some(f.speed_note().to_owned()),
            (None, e) => e.clone(),
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kernel", &self.kernel)?;
        map.serialize_entry("kvm", &self.kvm)?;
        map.serialize_entry("kvm_flavor", &self.kvm_flavor.map(KvmFlavor::name))?;
        map.serialize_entry("kvm_note", &note)?;
        map.serialize_entry("landlock_abi", &self.landlock_abi)?;
        map.serialize_entry("seccomp", &self.seccomp)?;
        map.serialize_entry("user_namespaces", &self.user_namespaces)?;
        map.serialize_entry("root", &self.root)?;
        map.serialize_entry("cgroup_v2", &self.cgroups.v2_mount)?;
        map.serialize_entry("cgroup_v2_controllers", &self.cgroups.v2_controllers)?;
        let v1: Vec<&str> = self.cgroups.v1.iter().map(|(c, _)| c.as_str()).collect();
        map.serialize_entry("cgroup_v1", &v1)?;
        map.end()
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.backends {
            let mark = if b.available { "available" } else { "unavailable" };
            writeln!(f, "{:<8} {:<11} {}", b.backend.name(), mark, b.reason)?;
        }
        let h = &self.host;
        writeln!(f, "\nhost: Linux {}{}", h.kernel, if h.root { ", running as root" } else { "" })?;
        match (h.kvm_flavor, &h.kvm_error) {
            (Some(fl), _) => writeln!(f, "  kvm: {} — {}", fl.name(), fl.speed_note())?,
            (None, Some(e)) => writeln!(f, "  kvm: no — {e}")?,
            (None, None) => writeln!(f, "  kvm: no")?,
        }
        match h.landlock_abi {
            Some(v) => writeln!(f, "  landlock: ABI {v}")?,
            None => writeln!(f, "  landlock: not available")?,
        }
        writeln!(f, "  seccomp: {}", if h.seccomp { "yes" } else { "no" })?;
        writeln!(f, "  user namespaces: {}", if h.user_namespaces { "yes" } else { "no" })?;
        let v2 = match &h.cgroups.v2_mount {
            Some(p) if h.cgroups.v2_controllers.is_empty() => {
                format!("v2 at {} (no controllers)", p.display())
            }
            Some(p) => format!("v2 at {} ({})", p.display(), h.cgroups.v2_controllers.join(", ")),
            None => "no v2".to_owned(),
        };
        let v1: Vec<&str> = h.cgroups.v1.iter().map(|(c, _)| c.as_str()).collect();
        write!(f, "  cgroups: {v2}; v1: {}", if v1.is_empty() { "none".to_owned() } else { v1.join(", ") })
    }
}

/// The host's facts, probed once (see [`probe`](crate::probe()), which adds what each backend
/// makes of them).
pub(crate) fn host() -> &'static HostSupport {
    static HOST: OnceLock<HostSupport> = OnceLock::new();
    HOST.get_or_init(probe_host)
}

fn probe_host() -> HostSupport {
    let (kvm, kvm_error) = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => (true, None),
        Err(e) => (false, Some(format!("cannot open /dev/kvm: {e}"))),
    };
    HostSupport {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default(),
        kvm,
        kvm_error,
        kvm_flavor: kvm.then(kvm_flavor),
        landlock_abi: landlock_abi(),
        seccomp: seccomp_supported(),
        user_namespaces: user_namespaces_allowed(),
        cgroups: cgroups(),
        // SAFETY: geteuid has no preconditions.
        root: unsafe { libc::geteuid() } == 0,
    }
}

fn kvm_flavor() -> KvmFlavor {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") {
        KvmFlavor::Pvm
    } else if loaded("kvm_intel") {
        KvmFlavor::VtX
    } else if loaded("kvm_amd") {
        KvmFlavor::AmdV
    } else {
        KvmFlavor::Unknown
    }
}

fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute pointer, size 0 and the VERSION flag, the call only returns
    // the ABI version (or an error); it creates nothing.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as u32)
}

fn seccomp_supported() -> bool {
    // SAFETY: PR_GET_SECCOMP only reads the calling thread's seccomp mode.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    mode >= 0 && Path::new("/proc/sys/kernel/seccomp/actions_avail").exists()
}

fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn user_namespaces_allowed() -> bool {
    if read_number("/proc/sys/user/max_user_namespaces").unwrap_or(1) <= 0 {
        return false;
    }
    // Debian's switch; absent elsewhere.
    if read_number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        // SAFETY: geteuid has no preconditions.
        return unsafe { libc::geteuid() } == 0;
    }
    true
}

fn cgroups() -> Cgroups {
    let mut c = Cgroups::default();
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return c;
    };
    for line in mountinfo.lines() {
        // ... mount-point ... - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let options = right.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" if c.v2_mount.is_none() => c.v2_mount = Some(PathBuf::from(unescape(mount_point))),
            "cgroup" => {
                for opt in options.split(',') {
                    if ["memory", "pids", "cpu", "cpuacct", "cpuset", "freezer"].contains(&opt) {
                        c.v1.push((opt.to_owned(), PathBuf::from(unescape(mount_point))));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(m) = &c.v2_mount {
        if let Ok(list) = std::fs::read_to_string(m.join("cgroup.controllers")) {
            c.v2_controllers = list.split_whitespace().map(str::to_owned).collect();
        }
    }
    c
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
