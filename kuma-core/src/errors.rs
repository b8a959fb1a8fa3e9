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
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
