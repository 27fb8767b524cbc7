//! Page sizes and page tokens for the List methods (AIP-158).
//!
//! A page token is an opaque, url-safe string carrying a keyset cursor (the
//! sort key of the last row returned), never an offset. It also carries a
//! short digest of its scope, the tenant and the filters it was made for, so
//! a token reused with other filters, or by another tenant, is refused with
//! INVALID_ARGUMENT. A token grants nothing: it is only ever applied inside
//! the caller's own, already verified, database.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use uuid::Uuid;

use crate::clock::Micros;
use crate::error::{Error, Result};

/// A keyset cursor over rows ordered by (create time, UUID): the row a page
/// ends at. Items and API keys use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub create_time: Micros,
    pub id: Uuid,
}

impl Cursor {
    pub fn to_bytes(self) -> Vec<u8> {
        let mut bytes = self.create_time.to_be_bytes().to_vec();
        bytes.extend_from_slice(self.id.as_bytes());
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (time, id) = bytes.split_at_checked(8)?;
        Some(Cursor {
            create_time: Micros::from_be_bytes(time.try_into().ok()?),
            id: Uuid::from_slice(id).ok()?,
        })
    }
}

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

const VERSION: u8 = 1;
const SCOPE_DIGEST_LEN: usize = 8;

/// `page_size` as asked: 0 means the default, more than the maximum is
/// clamped to it, negative is an error.
pub fn page_size(requested: i32) -> Result<usize> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

fn scope_digest(scope: &[u8]) -> [u8; SCOPE_DIGEST_LEN] {
    let digest = Sha256::digest(scope);
    digest[..SCOPE_DIGEST_LEN]
        .try_into()
        .expect("digest is longer")
}

pub fn encode(scope: &[u8], cursor: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(1 + SCOPE_DIGEST_LEN + cursor.len());
    bytes.push(VERSION);
    bytes.extend_from_slice(&scope_digest(scope));
    bytes.extend_from_slice(cursor);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Cuts a page its store read with one row more than `page_size` (which
/// says that a next page exists) to `page_size` rows, and returns the token
/// of the next page: the `cursor` of the last row kept, under `scope`; empty
/// on the last page.
pub fn cut_page<T>(
    page: &mut Vec<T>,
    page_size: usize,
    scope: &[u8],
    cursor: impl FnOnce(&T) -> Vec<u8>,
) -> String {
    if page.len() <= page_size {
        return String::new();
    }
    page.truncate(page_size);
    let last = page.last().expect("a full page has a last row");
    encode(scope, &cursor(last))
}

/// The cursor in `token` as `parse` reads it, or `None` for an empty token
/// (the first page). A token of this list whose cursor does not parse is
/// INVALID_ARGUMENT.
pub fn decode_with<T>(
    scope: &[u8],
    token: &str,
    parse: impl FnOnce(Vec<u8>) -> Option<T>,
) -> Result<Option<T>> {
    let Some(bytes) = decode(scope, token)? else {
        return Ok(None);
    };
    parse(bytes).map(Some).ok_or_else(|| {
        Error::invalid(
            "page_token",
            "is damaged: pass the next_page_token of the previous page unchanged",
        )
    })
}

/// The cursor in `token`, or `None` for an empty token (the first page).
pub fn decode(scope: &[u8], token: &str) -> Result<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::invalid(
            "page_token",
            "is not a page token of this list with these filters: pass the next_page_token \
             of the previous page unchanged, with the same filters, or none for the first page",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    match bytes.split_first() {
        Some((&VERSION, rest))
            if rest.len() > SCOPE_DIGEST_LEN && rest[..SCOPE_DIGEST_LEN] == scope_digest(scope) =>
        {
            Ok(Some(rest[SCOPE_DIGEST_LEN..].to_vec()))
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_read_one_row_long_is_cut_and_names_its_last_row() {
        let mut page = vec![1u8, 2, 3];
        let token = cut_page(&mut page, 2, b"scope", |last| vec![*last]);
        assert_eq!(page, [1, 2]);
        assert_eq!(decode(b"scope", &token).unwrap(), Some(vec![2]));
        let mut last_page = vec![1u8, 2];
        assert_eq!(
            cut_page(&mut last_page, 2, b"scope", |_| unreachable!()),
            ""
        );
        assert_eq!(last_page, [1, 2]);
    }

    #[test]
    fn cursors_round_trip_and_reject_wrong_lengths() {
        let cursor = Cursor {
            create_time: 1_700_000_000_000_000,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::from_bytes(&cursor.to_bytes()), Some(cursor));
        assert_eq!(Cursor::from_bytes(&cursor.to_bytes()[..23]), None);
        assert_eq!(Cursor::from_bytes(&[0; 25]), None);
    }

    #[test]
    fn page_sizes_follow_aip_158() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn a_token_round_trips_in_its_own_scope_only() {
        let token = encode(b"scope-a", b"cursor");
        assert_eq!(decode(b"scope-a", &token).unwrap().unwrap(), b"cursor");
        assert!(decode(b"scope-b", &token).is_err());
        assert_eq!(decode(b"scope-a", "").unwrap(), None);
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let token = encode(b"scope", b"cursor");
        for bad in [&token[1..], "!!!", "AQ", &format!("{token}="), "A"] {
            assert!(decode(b"scope", bad).is_err(), "{bad:?} accepted");
        }
    }
}
