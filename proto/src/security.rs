//! Transport security of the sync connection, shared by the controller and the enforcers.
//!
//! Production: mutual TLS (rustls). Each side reads a CA bundle, its certificate and its key from
//! PEM files (mounted from a Secret). The controller requires a client certificate signed by the
//! CA; the enforcer verifies the controller's certificate against the CA and the server name.
//!
//! Dev mode ([`Security::DevPlaintext`]): no TLS at all, for a controller and enforcers on one
//! machine. It refuses to bind or connect to anything but a loopback address, so it cannot be
//! turned on for a cluster by mistake.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// PEM files of one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle the peer's certificate must chain to.
    pub ca: PathBuf,
    /// This side's certificate (chain).
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

/// How the sync connection is secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// Mutual TLS.
    Tls(TlsFiles),
    /// Plaintext, loopback only.
    DevPlaintext,
}

/// Why a secured endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A PEM file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Dev mode was asked for a non-loopback address.
    #[error("dev mode (plaintext) only binds and connects to loopback addresses, not {addr}")]
    NotLoopback {
        /// The address or host.
        addr: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        path: path.to_owned(),
        source,
    })
}

impl TlsFiles {
    /// The controller's TLS: its identity, and client certificates required to chain to the CA.
    pub fn server_config(&self) -> Result<ServerTlsConfig, SecurityError> {
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .client_ca_root(Certificate::from_pem(read(&self.ca)?))
            .client_auth_optional(false))
    }

    /// The enforcer's TLS: the CA to verify the controller by, the name it must have, and the
    /// enforcer's own identity.
    pub fn client_config(&self, server_name: &str) -> Result<ClientTlsConfig, SecurityError> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .domain_name(server_name))
    }
}

/// Dev mode's bind check: only loopback addresses.
pub fn dev_bind_check(addr: SocketAddr) -> Result<(), SecurityError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(SecurityError::NotLoopback {
            addr: addr.to_string(),
        })
    }
}

/// Dev mode's connect check on the host of a URL: `localhost` or a loopback address.
pub fn dev_connect_check(host: &str) -> Result<(), SecurityError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(SecurityError::NotLoopback {
            addr: host.to_owned(),
        })
    }
}
