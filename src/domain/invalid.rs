//! The one error of the domain's parsers: input a client sent, refused, with where (a
//! field path such as `users[3].aliases[0].alias_name`) and why. The HTTP layer answers it
//! as a 400 whose message is its text.
//!
//! Two ways of saying it are in use, each in a contract partners show their customers, so
//! each is kept as it is: the field as the subject of a sentence (Braze's wording,
//! `users[3].external_id must be at most 512 bytes`), and the field as a label
//! (`filter.and: expected a non-empty array of filters`).
//!
//! A parser names the place relative to what it parses; its caller, which knows where that
//! value sits, puts its own place in front with [`Invalid::at`] (or [`InvalidAt::at`] on a
//! `Result`): `Profile::parse(fields).at(format_args!("users[{index}]"))`.

use std::{borrow::Cow, fmt};

use super::IdentifierError;

/// Input refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Where, e.g. `users[3].aliases[0].alias_name`; empty for the whole value parsed.
    path: String,
    /// Why.
    reason: Reason,
}

/// Why a value is refused, as the message says it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    /// After the path and a colon: `filter.and: expected a non-empty array of filters`.
    Labelled(Cow<'static, str>),
    /// After the path and a space, the path being the subject: `name must be a non-empty string`.
    Predicate(Cow<'static, str>),
    /// An identifier that is empty, too long or holds NUL, said as a predicate.
    Identifier(IdentifierError),
    /// A profile without any identifier, said as a predicate; a profile that is the whole
    /// value (an NDJSON line) is its subject as `profile`.
    NoIdentifier,
}

impl Invalid {
    /// Refused for `reason`, said after the path and a colon (alone, without a path).
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Invalid { path: String::new(), reason: Reason::Labelled(reason.into()) }
    }

    /// Refused for what `predicate` says of the field: the path, a space, the predicate.
    pub fn predicate(predicate: impl Into<Cow<'static, str>>) -> Self {
        Invalid { path: String::new(), reason: Reason::Predicate(predicate.into()) }
    }

    /// A profile with no external id, alias or device id: it could never be found again.
    pub fn no_identifier() -> Self {
        Invalid { path: String::new(), reason: Reason::NoIdentifier }
    }

    /// The same error, with `prefix` (where the parsed value sits) in front of its path.
    pub fn at(mut self, prefix: impl fmt::Display) -> Self {
        self.path = if self.path.is_empty() { prefix.to_string() } else { format!("{prefix}.{}", self.path) };
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.reason {
            Reason::Labelled(reason) if path.is_empty() => f.write_str(reason),
            Reason::Labelled(reason) => write!(f, "{path}: {reason}"),
            Reason::Predicate(predicate) if path.is_empty() => f.write_str(predicate),
            Reason::Predicate(predicate) => write!(f, "{path} {predicate}"),
            Reason::Identifier(error) => write!(f, "{path} {error}"),
            Reason::NoIdentifier => {
                let subject = if path.is_empty() { "profile" } else { path };
                write!(f, "{subject} must have an external_id, an alias or a device_id")
            }
        }
    }
}

impl std::error::Error for Invalid {}

/// An identifier's error, at no path yet: its caller names the field with [`Invalid::at`].
impl From<IdentifierError> for Invalid {
    fn from(error: IdentifierError) -> Self {
        Invalid { path: String::new(), reason: Reason::Identifier(error) }
    }
}

/// [`Invalid::at`] for a parser's `Result`, whatever error of the domain it holds.
pub trait InvalidAt<T> {
    /// The value, or the error as an [`Invalid`] with `prefix` in front of its path.
    fn at(self, prefix: impl fmt::Display) -> Result<T, Invalid>;
}

impl<T, E: Into<Invalid>> InvalidAt<T> for Result<T, E> {
    fn at(self, prefix: impl fmt::Display) -> Result<T, Invalid> {
        self.map_err(|error| error.into().at(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_way_of_saying_it_keeps_its_separator() {
        assert_eq!(Invalid::new("expected a string").at("braze_id").to_string(), "braze_id: expected a string");
        assert_eq!(Invalid::new("unknown scope").to_string(), "unknown scope");
        assert_eq!(
            Invalid::predicate("must be a valid string").at("cohort_id").to_string(),
            "cohort_id must be a valid string"
        );
        assert_eq!(
            Invalid::from(IdentifierError::Nul).at("device_id").to_string(),
            "device_id must not contain NUL characters"
        );
        assert_eq!(Invalid::no_identifier().to_string(), "profile must have an external_id, an alias or a device_id");
        assert_eq!(
            Invalid::no_identifier().at("users[3]").to_string(),
            "users[3] must have an external_id, an alias or a device_id"
        );
    }

    #[test]
    fn prefixes_join_with_a_dot() {
        let alias: Result<(), _> = Err(IdentifierError::TooLong).at("alias_name");
        assert_eq!(
            alias.at("aliases[0]").at("users[3]").unwrap_err().to_string(),
            "users[3].aliases[0].alias_name must be at most 512 bytes"
        );
        assert_eq!(
            Invalid::new("expected a string").at("alias.alias_name").at("line 3").to_string(),
            "line 3.alias.alias_name: expected a string"
        );
    }
}
