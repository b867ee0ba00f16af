//! The one error of this crate's conversions: which message, which field, what is wrong.

use std::fmt;

/// A message was rejected: `Snapshot.policy[3].key.prefix_len: 120 is not in 80..=96`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}.{field}: {problem}")]
pub struct WireError {
    /// Message type (`Snapshot`, `Delta`, `Hello`, ...).
    pub message: &'static str,
    /// Field path inside the message.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

impl WireError {
    pub(crate) fn new(message: &'static str, field: impl Into<String>, problem: Problem) -> Self {
        WireError {
            message,
            field: field.into(),
            problem,
        }
    }
}

/// What is wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A required field is absent.
    Missing,
    /// A number outside its range.
    OutOfRange {
        /// The value.
        value: u64,
        /// The allowed range.
        range: &'static str,
    },
    /// An enum value that is unspecified or unknown.
    BadEnum(i32),
    /// A string that must not be empty.
    Empty,
    /// Bytes of the wrong length.
    Length {
        /// Actual length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// A prefix whose bits beyond its length are not zero.
    HostBits,
    /// A key that appears twice.
    Duplicate,
    /// A key both upserted and deleted in one delta.
    UpsertedAndDeleted,
    /// A rule id that is not the id of the rule reference.
    RuleId {
        /// The id the reference hashes to.
        expected: u32,
    },
    /// A delete of a key the receiver does not hold.
    NotHeld,
    /// A revision that does not follow the one it must follow.
    Revision {
        /// The revision given.
        got: u64,
        /// What it had to be (`> n` or `= n`).
        expected: String,
    },
    /// A message of another type was expected.
    Unexpected(&'static str),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::OutOfRange { value, range } => write!(f, "{value} is not in {range}"),
            Problem::BadEnum(v) => write!(f, "{v} is not a valid value"),
            Problem::Empty => write!(f, "empty"),
            Problem::Length { len, expected } => {
                write!(f, "{len} bytes, expected {expected}")
            }
            Problem::HostBits => write!(f, "bits set beyond the prefix length"),
            Problem::Duplicate => write!(f, "duplicate key"),
            Problem::UpsertedAndDeleted => write!(f, "key both upserted and deleted"),
            Problem::RuleId { expected } => {
                write!(f, "does not match the rule reference (id {expected})")
            }
            Problem::NotHeld => write!(f, "deletes a key that is not held"),
            Problem::Revision { got, expected } => write!(f, "{got}, expected {expected}"),
            Problem::Unexpected(what) => write!(f, "expected {what}"),
        }
    }
}
