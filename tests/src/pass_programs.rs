//! Programs that let everything through, at the six hooks Bulkhead uses: the floor of what any
//! datapath at those hooks costs (the kernel's hook invocation, without a program body). The
//! benchmark runs a lane with them, so its report separates the price of the hooks on this
//! machine from the price of Bulkhead's programs.
//!
//! Each program is the two instructions `r0 = 1; exit`, loaded with `BPF_PROG_LOAD` and attached
//! with `BPF_LINK_CREATE` (as aya attaches Bulkhead's own). The links are not pinned: dropping a
//! [`PassPrograms`] closes them, which detaches the programs.

use std::{
    ffi::CStr,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use crate::bpf_query::{
    ATTACH_CONNECT4, ATTACH_CONNECT6, ATTACH_EGRESS, ATTACH_INGRESS, ATTACH_SENDMSG4,
    ATTACH_SENDMSG6,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// `r0 = 1` (`BPF_ALU64 | BPF_MOV | BPF_K`), then `exit` (`BPF_JMP | BPF_EXIT`).
static PASS: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0x00, 0, 0, 1, 0, 0, 0]),
    u64::from_le_bytes([0x95, 0x00, 0, 0, 0, 0, 0, 0]),
];
static LICENSE: &CStr = c"GPL";

/// The leading fields of `bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The leading fields of `bpf_attr` for `BPF_LINK_CREATE`.
#[repr(C)]
#[derive(Default)]
struct LinkAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Pass-everything programs attached to one cgroup at Bulkhead's six hooks; detached on drop.
pub struct PassPrograms {
    _links: Vec<OwnedFd>,
}

impl PassPrograms {
    /// Loads and attaches the six programs to `cgroup`.
    pub fn attach(cgroup: &Path) -> io::Result<Self> {
        let dir = File::open(cgroup)?;
        let hooks = [
            (BPF_PROG_TYPE_CGROUP_SKB, ATTACH_INGRESS, "pass_ingress"),
            (BPF_PROG_TYPE_CGROUP_SKB, ATTACH_EGRESS, "pass_egress"),
            (
                BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                ATTACH_CONNECT4,
                "pass_connect4",
            ),
            (
                BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                ATTACH_CONNECT6,
                "pass_connect6",
            ),
            (
                BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                ATTACH_SENDMSG4,
                "pass_sendmsg4",
            ),
            (
                BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                ATTACH_SENDMSG6,
                "pass_sendmsg6",
            ),
        ];
        let mut links = Vec::with_capacity(hooks.len());
        for (prog_type, attach_type, name) in hooks {
            let prog = load(prog_type, attach_type, name)
                .map_err(|e| io::Error::new(e.kind(), format!("loading {name}: {e}")))?;
            let link = link(&prog, &dir, attach_type).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("attaching {name} to {}: {e}", cgroup.display()),
                )
            })?;
            links.push(link);
        }
        Ok(Self { _links: links })
    }
}

fn load(prog_type: u32, attach_type: u32, name: &str) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let attr = LoadAttr {
        prog_type,
        insn_cnt: PASS.len() as u32,
        insns: PASS.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach_type,
        ..LoadAttr::default()
    };
    // The verifier gives up with EAGAIN when a signal arrives while it runs: try again, as
    // libbpf does (the enforcer also blocks signals around its loads, see its `verifier.rs`).
    let mut attempts = 1;
    loop {
        match bpf(BPF_PROG_LOAD, &attr) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 => attempts += 1,
            result => return result,
        }
    }
}

fn link(prog: &OwnedFd, cgroup: &File, attach_type: u32) -> io::Result<OwnedFd> {
    let attr = LinkAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    bpf(BPF_LINK_CREATE, &attr)
}

/// The two `bpf_attr` prefixes this module passes: every value of them is valid for its command
/// (their only pointers, in [`LoadAttr`], refer to statics).
trait Attr {}
impl Attr for LoadAttr {}
impl Attr for LinkAttr {}

/// One `bpf(2)` call that returns a new file descriptor.
#[expect(
    unsafe_code,
    reason = "BPF_PROG_LOAD of raw instructions has no wrapper in aya 0.14"
)]
fn bpf<A: Attr>(cmd: libc::c_long, attr: &A) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised prefix of `bpf_attr` for `cmd` (the kernel accepts a
    // shorter attr and zero-fills the rest); the pointers in it (instructions, license) refer to
    // statics.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<A>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("bpf(2) returned no descriptor"))?;
    // SAFETY: a new descriptor the kernel just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
