//! The absolute URL a challenge names as the paid resource.

/// `public_url` + `path` when a public base URL is configured (the gateway sits behind another
/// proxy or TLS terminator), else `scheme://authority` + `path`. The query and fragment are
/// dropped: they would leak request data (credentials such as a lease token) into the 402 and
/// the payment, and the resource is the route, not one call to it.
pub fn resource_url(public_url: Option<&str>, scheme: &str, authority: &str, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut url = match public_url {
        Some(base) => base.trim_end_matches('/').to_owned(),
        None => {
            let scheme = if scheme.is_empty() { "http" } else { scheme };
            format!("{scheme}://{authority}")
        }
    };
    if !path.starts_with('/') {
        url.push('/');
    }
    url.push_str(path);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_absolute_urls() {
        assert_eq!(
            resource_url(None, "https", "api.example.com", "/q?x=1"),
            "https://api.example.com/q"
        );
        assert_eq!(
            resource_url(None, "http", "127.0.0.1:10000", "/a/b"),
            "http://127.0.0.1:10000/a/b"
        );
        assert_eq!(resource_url(None, "", "h", "/"), "http://h/");
        assert_eq!(
            resource_url(
                Some("https://pub.example/"),
                "http",
                "internal:8080",
                "/q#f"
            ),
            "https://pub.example/q"
        );
        assert_eq!(
            resource_url(Some("https://pub.example"), "http", "i", ""),
            "https://pub.example/"
        );
        assert_eq!(resource_url(None, "http", "h", "x"), "http://h/x");
    }
}
