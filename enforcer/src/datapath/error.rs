//! The datapath's one error type: each variant names the object (map, program, path) involved.

use std::{io, path::PathBuf};

/// Errors of loading, pinning, attaching, adopting and writing the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the eBPF object was not built (AYA_BUILD_SKIP was set at build time)")]
    ObjectMissing,
    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program `{name}` is missing from the eBPF object")]
    ProgramMissing { name: &'static str },
    #[error("map `{name}` is missing from the eBPF object")]
    MapMissing { name: &'static str },
    #[error("program `{name}`: {action}")]
    Program {
        name: &'static str,
        action: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {what} at {path}")]
    Pin {
        what: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("link of program `{name}` at {path}")]
    Link {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map `{name}`: {action}")]
    Map {
        name: &'static str,
        action: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("upgrading the datapath at {root}: {reason}")]
    Upgrade { root: PathBuf, reason: &'static str },
    #[error(
        "partial installation at {root}: {present} of {expected} links are pinned; run uninstall first"
    )]
    Partial {
        root: PathBuf,
        present: usize,
        expected: usize,
    },
    /// Desired map contents that the programs cannot follow; nothing was written.
    #[error("desired maps, {field}: {problem}")]
    Desired {
        field: &'static str,
        problem: String,
    },
}

impl DatapathError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn map(
        name: &'static str,
        action: impl Into<String>,
        source: aya::maps::MapError,
    ) -> Self {
        Self::Map {
            name,
            action: action.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn program(
        name: &'static str,
        action: &'static str,
        source: aya::programs::ProgramError,
    ) -> Self {
        Self::Program {
            name,
            action,
            source: Box::new(source),
        }
    }
}
