//! The crate's one error type. Every variant renders as a single line that names the file, the
//! object (`Kind namespace/name`) and the field path, so an operator can fix a bad input at once.

use std::path::PathBuf;

/// Everything that can go wrong while loading, validating or compiling policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A YAML/JSON document is not well formed, or does not have the shape of its kind.
    #[error("{file}: {object}: {message}")]
    Parse {
        /// Source file (or a label such as `<stdin>`).
        file: String,
        /// `document N` or `Kind namespace/name` when the header could be read.
        object: String,
        /// The parser's message.
        message: String,
    },
    /// An object is well formed but invalid.
    #[error("{file}: {object}: {field}: {message}")]
    Invalid {
        /// Source file.
        file: String,
        /// `Kind namespace/name` (cluster-scoped: `Kind name`), or `document N`.
        object: String,
        /// Field path, e.g. `spec.ingress[0].ports[1].endPort`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Two objects share `(kind, namespace, name)`.
    #[error("{file}: {object}: metadata.name: duplicate object (first defined in {first_file})")]
    Duplicate {
        /// File of the second definition.
        file: String,
        /// `Kind namespace/name`.
        object: String,
        /// File of the first definition.
        first_file: String,
    },
    /// An identity range has no free number left.
    #[error("identity allocation: no free identity left in range {range} for key {key}")]
    IdentitiesExhausted {
        /// `workload` or `cidr`.
        range: &'static str,
        /// The key that could not be allocated.
        key: String,
    },
    /// Two rules hash to the same rule id (astronomically rare; rename one rule or policy).
    #[error("rule id collision: {first} and {second} both hash to {id:#010x}; rename one of them")]
    RuleIdCollision {
        /// The colliding id.
        id: u32,
        /// One rule (`kind ns/name direction index`).
        first: String,
        /// The other rule.
        second: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub(crate) fn invalid(
        file: &str,
        object: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            file: file.to_owned(),
            object: object.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}
