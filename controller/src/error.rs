//! The one place where the controller's errors become gRPC statuses.
//!
//! Handlers return [`ServiceError`]; its `From` impls take store and PKI
//! errors, and `From<ServiceError> for Status` decides what a caller may see:
//! validation and lookup failures verbatim (they only echo the caller's own
//! input), everything else as a generic `internal` after logging the cause.

use tonic::Status;

use crate::name::InvalidName;
use crate::pki::PkiError;
use crate::store::StoreError;

/// Why a gRPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The named user, agent, policy or grant does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller presented no usable credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The store failed.
    #[error("store operation failed")]
    Store(#[source] StoreError),
    /// The PKI failed.
    #[error("certificate operation failed")]
    Pki(#[source] PkiError),
    /// Anything else that is the controller's fault.
    #[error("{0}")]
    Internal(&'static str),
}

impl ServiceError {
    /// An invalid-argument error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, name } => {
                Self::NotFound(format!("{entity} {name} not found"))
            }
            StoreError::AlreadyExists { entity, name } => {
                Self::AlreadyExists(format!("{entity} {name} already exists"))
            }
            StoreError::OutOfRange { what } => Self::Invalid(format!("{what} is out of range")),
            StoreError::Conflict(msg) => Self::Invalid(msg),
            other => Self::Store(other),
        }
    }
}

impl From<PkiError> for ServiceError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::InvalidCsr(_) => {
                Self::Invalid("csr_pem: invalid certificate signing request".into())
            }
            other => Self::Pki(other),
        }
    }
}

impl From<InvalidName> for ServiceError {
    fn from(e: InvalidName) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(m) => Status::invalid_argument(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            internal => {
                tracing::error!(error = %ErrorChain(&internal), "request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// Displays an error with its whole `source()` chain, `a: b: c`.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_generic() {
        let status = Status::from(ServiceError::Store(StoreError::Database(
            sqlx::Error::PoolClosed,
        )));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = Status::from(ServiceError::from(StoreError::NotFound {
            entity: "user",
            name: "bob".into(),
        }));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "user bob not found");
    }
}
