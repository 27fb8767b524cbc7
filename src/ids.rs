//! Identifiers parsed once, at the edge of the service.
//!
//! A value of these types has been checked, so code past the boundary never
//! re-validates it. [`TenantId`] matters most: it is the only thing a tenant's
//! file name is ever built from, and it can only be made from a canonical UUID,
//! so no metadata value can name another path.

use std::fmt;

use uuid::Uuid;

use crate::error::{Error, Result};

/// Parses a UUID that must be written in its canonical form: lower-case,
/// hyphenated, 36 characters. Other spellings of a UUID (upper case, braces,
/// `urn:uuid:`, no hyphens) are refused so that one id has exactly one text.
pub fn parse_canonical_uuid(field: &'static str, text: &str) -> Result<Uuid> {
    let hint = "must be a UUID in lower-case hyphenated form, such as 0190f5d2-5b7a-7cc3-a1d4-3f7c2b9e8a10";
    if text.is_empty() {
        return Err(Error::invalid(field, format!("is required and {hint}")));
    }
    match Uuid::try_parse(text) {
        Ok(uuid) if uuid.hyphenated().to_string() == text => Ok(uuid),
        _ => Err(Error::invalid(field, hint)),
    }
}

/// The id of a tenant: a canonical UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Uuid);

impl TenantId {
    pub fn new_random() -> Self {
        TenantId(Uuid::new_v4())
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        parse_canonical_uuid(field, text).map(TenantId)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The name of this tenant's database file: `<uuid>.db`.
    pub fn file_name(&self) -> String {
        format!("{}.db", self.0.hyphenated())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0.hyphenated())
    }
}

/// As its canonical text, and parsed as strictly when read back.
impl serde::Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TenantId::parse("tenant_id", &text).map_err(serde::de::Error::custom)
    }
}

/// A tenant's unique slug: `^[a-z][a-z0-9-]{1,62}$`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        let mut chars = text.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if starts_with_letter && rest_ok && (2..=63).contains(&text.len()) {
            Ok(TenantName(text.to_owned()))
        } else {
            Err(Error::invalid(
                field,
                "must be 2 to 63 characters of a-z, 0-9 and '-', starting with a letter",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_spelling_of_a_uuid_is_a_tenant_id() {
        let canonical = "6f1c1a7e-2b1d-4c84-9a0e-6d4c1f0b2a9e";
        assert_eq!(
            TenantId::parse("id", canonical).unwrap().to_string(),
            canonical
        );
        for other in [
            "6F1C1A7E-2B1D-4C84-9A0E-6D4C1F0B2A9E",
            "{6f1c1a7e-2b1d-4c84-9a0e-6d4c1f0b2a9e}",
            "urn:uuid:6f1c1a7e-2b1d-4c84-9a0e-6d4c1f0b2a9e",
            "6f1c1a7e2b1d4c849a0e6d4c1f0b2a9e",
            " 6f1c1a7e-2b1d-4c84-9a0e-6d4c1f0b2a9e",
            "../catalog",
            "",
        ] {
            assert!(
                TenantId::parse("id", other).is_err(),
                "{other:?} was accepted"
            );
        }
    }

    #[test]
    fn a_tenant_file_name_is_the_uuid_and_nothing_else() {
        let id = TenantId::parse("id", "6f1c1a7e-2b1d-4c84-9a0e-6d4c1f0b2a9e").unwrap();
        assert_eq!(id.file_name(), "6f1c1a7e-2b1d-4c84-9a0e-6d4c1f0b2a9e.db");
    }

    #[test]
    fn tenant_names_are_slugs() {
        for good in ["acme", "a1", "acme-corp-2", &format!("a{}", "b".repeat(62))] {
            assert!(
                TenantName::parse("name", good).is_ok(),
                "{good:?} was refused"
            );
        }
        for bad in [
            "",
            "a",
            "1acme",
            "-acme",
            "Acme",
            "acme_corp",
            "acme corp",
            "acmé",
            &format!("a{}", "b".repeat(63)),
        ] {
            assert!(
                TenantName::parse("name", bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }
}
