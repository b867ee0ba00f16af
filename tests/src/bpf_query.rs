//! Which BPF programs are attached directly to a cgroup (`BPF_PROG_QUERY`), so tests can prove
//! that adopting never attaches a second time. aya 0.14 has no public query for cgroup program
//! types, hence the raw syscall.

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

/// `enum bpf_attach_type` values of the hooks Bulkhead uses.
pub const ATTACH_INGRESS: u32 = 0;
pub const ATTACH_EGRESS: u32 = 1;
pub const ATTACH_CONNECT4: u32 = 10;
pub const ATTACH_CONNECT6: u32 = 11;
pub const ATTACH_SENDMSG4: u32 = 14;
pub const ATTACH_SENDMSG6: u32 = 15;
/// Every attach type Bulkhead uses.
pub const ALL_ATTACH_TYPES: [u32; 6] = [
    ATTACH_INGRESS,
    ATTACH_EGRESS,
    ATTACH_CONNECT4,
    ATTACH_CONNECT6,
    ATTACH_SENDMSG4,
    ATTACH_SENDMSG6,
];

const BPF_PROG_QUERY: libc::c_long = 16;

/// The leading fields of `bpf_attr` for `BPF_PROG_QUERY` (the kernel accepts a shorter attr).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// Ids of the programs attached directly (not inherited) to `cgroup` for `attach_type`.
pub fn attached_programs(cgroup: &Path, attach_type: u32) -> io::Result<Vec<u32>> {
    let dir = File::open(cgroup)?;
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    let ret = query(&mut attr);
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

#[expect(unsafe_code, reason = "BPF_PROG_QUERY has no safe wrapper in aya 0.14")]
fn query(attr: &mut QueryAttr) -> libc::c_long {
    // SAFETY: `attr` is a valid, initialised prefix of `bpf_attr`; `prog_ids` points to a live
    // buffer of `prog_cnt` u32s owned by the caller for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            std::ptr::from_mut(attr),
            size_of::<QueryAttr>() as libc::c_uint,
        )
    }
}

/// Total number of programs attached directly to `cgroup` over Bulkhead's attach types.
pub fn attached_count(cgroup: &Path) -> io::Result<usize> {
    let mut n = 0;
    for t in ALL_ATTACH_TYPES {
        n += attached_programs(cgroup, t)?.len();
    }
    Ok(n)
}
