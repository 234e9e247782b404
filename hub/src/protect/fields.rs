//! Checks shared by the protection objects' requests: names, free text, bounded numbers, and
//! the fields where `null` (clear it) differs from absent (keep it).

use std::ops::RangeInclusive;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

pub(super) const MAX_NAME: usize = 255;
pub(super) const MAX_DESCRIPTION: usize = 1024;

/// 1 to 255 bytes once trimmed.
pub(super) fn name(field: &str, value: &str) -> Result<String> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(Error::Invalid(format!(
            "{field} must have 1 to {MAX_NAME} bytes (not only spaces)"
        )));
    }
    Ok(value.to_owned())
}

/// A name that must be given on create and may be changed on update.
pub(super) fn required_name(
    field: &str,
    given: Option<&str>,
    current: Option<&str>,
) -> Result<String> {
    match (given, current) {
        (Some(v), _) => name(field, v),
        (None, Some(c)) => Ok(c.to_owned()),
        (None, None) => Err(Error::Invalid(format!("{field} is required"))),
    }
}

/// Free text: empty or only spaces is none.
pub(super) fn description(value: Option<String>) -> Result<Option<String>> {
    let Some(value) = value else { return Ok(None) };
    if value.len() > MAX_DESCRIPTION {
        return Err(Error::Invalid(format!(
            "description must have at most {MAX_DESCRIPTION} bytes"
        )));
    }
    let value = value.trim();
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

pub(super) fn bounded(field: &str, value: u32, range: RangeInclusive<u32>) -> Result<u32> {
    if range.contains(&value) {
        return Ok(value);
    }
    Err(Error::Invalid(format!(
        "{field} must be from {} to {}, not {value}",
        range.start(),
        range.end()
    )))
}

/// For `#[serde(default, deserialize_with = "present")]` on an `Option<Option<T>>`: absent is
/// `None` (keep), `null` is `Some(None)` (clear), a value is `Some(Some(v))`.
pub(super) fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The given value (`null` clears it), else the current one (an update; none on a create).
pub(super) fn merged<T: Clone>(given: Option<Option<T>>, current: Option<&Option<T>>) -> Option<T> {
    match given {
        Some(v) => v,
        None => current.cloned().flatten(),
    }
}

pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
