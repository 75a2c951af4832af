//! Which messages of a topic a listener wants: an ordering key and header
//! values, all of which must match. Shared by every transport (query
//! parameters `key` and `header.<name>` here; a WebSocket subscribe frame
//! carries the same two things).

use courier_api::realtime::{params, Grant};
use courier_core::Message;

use crate::error::{codes, ApiError};

/// A listener's filter; the default one matches every message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Filter {
    pub key: Option<String>,
    /// `(name, value)` pairs, sorted, each of which must be on the message.
    pub headers: Vec<(String, String)>,
}

impl Filter {
    /// Builds a filter from query pairs, taking `key` and `header.<name>`
    /// and leaving the others to the caller.
    pub(crate) fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ApiError> {
        let mut filter = Filter::default();
        for (name, value) in pairs {
            if name == params::KEY {
                if filter.key.replace(value.to_owned()).is_some() {
                    return Err(ApiError::bad_request(
                        codes::INVALID_QUERY,
                        "key may be given once",
                    ));
                }
            } else if let Some(header) = name.strip_prefix(params::HEADER_PREFIX) {
                if header.is_empty() {
                    return Err(ApiError::bad_request(
                        codes::INVALID_QUERY,
                        "a header filter needs a name: header.<name>=<value>",
                    ));
                }
                filter.headers.push((header.to_owned(), value.to_owned()));
            }
        }
        filter.headers.sort();
        filter.headers.dedup();
        Ok(filter)
    }

    /// Whether a query parameter is one of the filter's.
    pub(crate) fn is_filter_param(name: &str) -> bool {
        name == params::KEY || name.starts_with(params::HEADER_PREFIX)
    }

    pub(crate) fn matches(&self, m: &Message) -> bool {
        self.key
            .as_deref()
            .is_none_or(|k| m.key.as_deref() == Some(k))
            && self
                .headers
                .iter()
                .all(|(name, value)| m.headers.get(name) == Some(value))
    }

    /// Whether this filter asks for at least what `grant` restricts a
    /// subscriber to (its key, its header values).
    pub(crate) fn within(&self, grant: &Grant) -> bool {
        grant.key().is_none_or(|k| self.key.as_deref() == Some(k))
            && grant.headers().is_none_or(|required| {
                required
                    .iter()
                    .all(|(name, value)| self.headers.iter().any(|(n, v)| n == name && v == value))
            })
    }

    /// The filter as a query string with sorted parameters (`""` for none):
    /// how presence names it.
    pub(crate) fn label(&self) -> String {
        let mut parts: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{}{n}={v}", params::HEADER_PREFIX))
            .collect();
        if let Some(k) = &self.key {
            parts.push(format!("{}={k}", params::KEY));
        }
        parts.sort();
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn message(key: Option<&str>, headers: &[(&str, &str)]) -> Message {
        Message {
            seq: 1,
            id: "x".into(),
            published_at: 0,
            deliver_at: None,
            key: key.map(Into::into),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Default::default(),
        }
    }

    #[test]
    fn all_parts_must_match() {
        let f = Filter::from_pairs([("key", "k"), ("header.user", "42"), ("from", "new")]).unwrap();
        assert_eq!(f.label(), "header.user=42&key=k");
        assert!(f.matches(&message(Some("k"), &[("user", "42"), ("x", "y")])));
        assert!(!f.matches(&message(Some("k"), &[("user", "43")])));
        assert!(!f.matches(&message(None, &[("user", "42")])));
        assert!(Filter::default().matches(&message(None, &[])));
        assert!(Filter::from_pairs([("key", "a"), ("key", "b")]).is_err());
        assert!(Filter::from_pairs([("header.", "a")]).is_err());
    }

    #[test]
    fn grants_restrict_filters() {
        let grant = Grant::Restricted {
            topic: "n".into(),
            key: Some("user-42".into()),
            headers: BTreeMap::new(),
        };
        let f = |pairs: &[(&str, &str)]| Filter::from_pairs(pairs.iter().copied()).unwrap();
        assert!(f(&[("key", "user-42")]).within(&grant));
        assert!(f(&[("key", "user-42"), ("header.a", "b")]).within(&grant));
        assert!(!f(&[("key", "user-43")]).within(&grant));
        assert!(!f(&[]).within(&grant));
        assert!(f(&[]).within(&Grant::Topic("n".into())));
    }
}
