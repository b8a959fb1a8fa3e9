//! Errors that cross crate boundaries keep their causes: extension points report a [`BoxError`],
//! and whoever shows one to a person prints its [`chain`].

/// An error with its causes, as the extension points of the kuma-rs crates report them (a
/// `String` converts into one).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `error` and its sources, `: `-separated.
///
/// ```
/// let e: kuma_core::errors::BoxError = "no such mesh".into();
/// assert_eq!(kuma_core::errors::chain(e.as_ref()), "no such mesh");
/// ```
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    Chain(error).to_string()
}

/// Displays an error and its sources, `: `-separated, without building a string first: what
/// log lines record (`tracing::warn!(error = %Chain(&e), "...")`).
///
/// ```
/// use kuma_core::errors::Chain;
/// use kuma_core::store::{BackendError, StoreError};
///
/// let io = std::io::Error::other("connection reset");
/// let e = StoreError::Backend(BackendError::caused_by("PostgreSQL", io));
/// assert_eq!(Chain(&e).to_string(), "store backend error: PostgreSQL: connection reset");
/// ```
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
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

impl std::fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
