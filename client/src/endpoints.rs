//! Parsing of endpoint lists ("host:port,host:port").

use crate::error::{Error, Result};

/// Splits a comma-separated endpoint list (as in `--endpoints` or a DIR/endpoints file),
/// ignoring whitespace, newlines and empty items.
pub fn parse_endpoint_list(text: &str) -> Result<Vec<String>> {
    let endpoints: Vec<String> =
        text.split([',', '\n']).map(str::trim).filter(|item| !item.is_empty()).map(str::to_string).collect();
    if endpoints.is_empty() {
        return Err(Error::InvalidArgument("the endpoint list is empty (expected host:port[,host:port...])".into()));
    }
    if let Some(bad) = endpoints.iter().find(|e| !e.contains(':')) {
        return Err(Error::InvalidArgument(format!("endpoint {bad:?} has no port (expected host:port)")));
    }
    Ok(endpoints)
}

/// The URI tonic connects to for an endpoint given as "host:port" or a full URI.
pub(crate) fn endpoint_uri(endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_comma_separated_list_with_whitespace() {
        assert_eq!(
            parse_endpoint_list(" 127.0.0.1:7100, 127.0.0.1:7101,,127.0.0.1:7102\n").unwrap(),
            ["127.0.0.1:7100", "127.0.0.1:7101", "127.0.0.1:7102"]
        );
    }

    #[test]
    fn rejects_empty_lists_and_missing_ports() {
        assert!(parse_endpoint_list(" , \n").is_err());
        assert!(parse_endpoint_list("127.0.0.1:7100,localhost").is_err());
    }

    #[test]
    fn builds_http_uris() {
        assert_eq!(endpoint_uri("127.0.0.1:7100"), "http://127.0.0.1:7100");
        assert_eq!(endpoint_uri("http://h:1"), "http://h:1");
    }
}
