//! User identifiers: external_id, device_id and aliases (label + name).
//!
//! Each is a non-empty string of at most 512 bytes without NUL characters: PostgreSQL
//! cannot store NUL in `text`, so it must be refused here as a 400, never reach the
//! database as a 500.

use std::fmt;

use serde::Serialize;

use super::{Invalid, InvalidAt};

/// Longest identifier accepted, in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 512;

/// Why a string is not a valid identifier: the reason of an [`super::Invalid`] once its
/// caller names the field (`users[3].external_id must be at most 512 bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The string is empty.
    #[error("must be a non-empty string")]
    Empty,
    /// The string is over [`MAX_IDENTIFIER_BYTES`].
    #[error("must be at most 512 bytes")]
    TooLong,
    /// The string holds a NUL character.
    #[error("must not contain NUL characters")]
    Nul,
}

fn check_identifier(value: &str) -> Result<(), IdentifierError> {
    if value.is_empty() {
        Err(IdentifierError::Empty)
    } else if value.len() > MAX_IDENTIFIER_BYTES {
        Err(IdentifierError::TooLong)
    } else if value.contains('\0') {
        Err(IdentifierError::Nul)
    } else {
        Ok(())
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses a raw string; the only way to make one.
            pub fn parse(value: String) -> Result<Self, IdentifierError> {
                check_identifier(&value)?;
                Ok($name(value))
            }

            /// The identifier's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The identifier's text, owned.
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A user's external id, set by the customer; unique per workspace.
    ExternalId
);
identifier!(
    /// A device id; matches anonymous users only in cohort imports.
    DeviceId
);
identifier!(
    /// The label half of an alias (the namespace, e.g. `amplitude_id`).
    AliasLabel
);
identifier!(
    /// The name half of an alias (the value within the label).
    AliasName
);

/// A user alias: unique per workspace by (label, name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Alias {
    /// The alias label.
    pub alias_label: AliasLabel,
    /// The alias name.
    pub alias_name: AliasName,
}

impl Alias {
    /// Parses both halves; the error's path is the half at fault (`alias_label` or
    /// `alias_name`).
    pub fn parse(alias_label: String, alias_name: String) -> Result<Self, Invalid> {
        Ok(Alias {
            alias_label: AliasLabel::parse(alias_label).at("alias_label")?,
            alias_name: AliasName::parse(alias_name).at("alias_name")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rejects_empty_long_and_nul() {
        assert_eq!(ExternalId::parse(String::new()), Err(IdentifierError::Empty));
        assert_eq!(ExternalId::parse("a".repeat(513)), Err(IdentifierError::TooLong));
        assert_eq!(ExternalId::parse("a\0b".into()), Err(IdentifierError::Nul));
        assert!(ExternalId::parse("a".repeat(512)).is_ok());
        // 512 bytes, not 512 characters: a 2-byte character counts twice.
        assert_eq!(DeviceId::parse("é".repeat(257)), Err(IdentifierError::TooLong));
    }

    #[test]
    fn alias_error_names_the_half() {
        assert_eq!(
            Alias::parse("".into(), "x".into()).unwrap_err().to_string(),
            "alias_label must be a non-empty string"
        );
        assert_eq!(
            Alias::parse("x".into(), "\0".into()).unwrap_err().to_string(),
            "alias_name must not contain NUL characters"
        );
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_valid_strings(s in ".{0,600}") {
            let valid = !s.is_empty() && s.len() <= MAX_IDENTIFIER_BYTES && !s.contains('\0');
            prop_assert_eq!(ExternalId::parse(s.clone()).is_ok(), valid);
        }
    }
}
