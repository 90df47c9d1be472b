//! Where a browser without a session is sent: Label Studio's login page, with the page it asked
//! for as `next`, reduced to a path on this site so the login can never send it elsewhere.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What `next` escapes: everything but unreserved characters and `/`, as Django's
/// `redirect_to_login` does.
const NEXT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Longest original target carried over; a longer one sends the browser to `/` after login.
const MAX_TARGET_LEN: usize = 4096;

/// `<public url>/user/login/?next=<path and query>`, relative without a public URL.
pub fn login_url(public_url: Option<&str>, original: Option<&str>) -> String {
    let base = public_url.map_or("", |url| url.trim_end_matches('/'));
    let next = local_target(original.unwrap_or("/"));
    format!(
        "{base}/user/login/?next={}",
        utf8_percent_encode(&next, NEXT)
    )
}

/// The path and query of a request target, whatever shape the gateway sent it in (a path, an
/// absolute URL, something hostile), always beginning with exactly one `/`: never `//host` or
/// `/\host`, which browsers read as another site.
pub fn local_target(original: &str) -> String {
    if original.len() > MAX_TARGET_LEN {
        return "/".to_owned();
    }
    // Control characters go first: browsers drop tabs and newlines anywhere in a URL, so
    // `/\t/host` is `//host` to them, and the checks below must see what a browser will.
    let cleaned: String = original.chars().filter(|c| !c.is_control()).collect();
    let mut rest = cleaned.trim();
    if let Some(fragment) = rest.find('#') {
        rest = &rest[..fragment];
    }
    if let Some(after_scheme) = strip_scheme(rest) {
        rest = after_scheme;
        // `scheme://authority/path`: the authority goes, slashes of either kind.
        let authority = rest.trim_start_matches(['/', '\\']);
        if authority.len() < rest.len() {
            rest = authority
                .find(['/', '\\', '?'])
                .map_or("", |end| &authority[end..]);
        }
    }
    let path = rest.trim_start_matches(['/', '\\']);
    let mut target = String::with_capacity(path.len() + 1);
    target.push('/');
    target.push_str(path);
    target
}

/// What follows `scheme:` when the target starts with a URL scheme.
fn strip_scheme(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once(':')?;
    let mut chars = scheme.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    (starts_with_letter && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        .then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_and_query_are_carried_encoded() {
        assert_eq!(
            login_url(None, Some("/projects/3/data?page=2&x=a b")),
            "/user/login/?next=/projects/3/data%3Fpage%3D2%26x%3Da%20b"
        );
        assert_eq!(
            login_url(Some("https://ls.example.com/"), Some("/")),
            "https://ls.example.com/user/login/?next=/"
        );
        assert_eq!(login_url(None, None), "/user/login/?next=/");
    }

    #[test]
    fn next_never_names_another_host() {
        for (hostile, expected) in [
            ("//evil.com/x", "/evil.com/x"),
            ("/\\evil.com", "/evil.com"),
            ("\\\\evil.com", "/evil.com"),
            ("https://evil.com/a?b=1", "/a?b=1"),
            ("https://evil.com", "/"),
            ("http:\\\\evil.com\\a", "/a"),
            ("https:evil.com", "/evil.com"),
            ("javascript:alert(1)", "/alert(1)"),
            ("evil.com", "/evil.com"),
            ("/a\r\nLocation: x", "/aLocation: x"),
            ("/a#//evil.com", "/a"),
            ("/\t/evil.com", "/evil.com"),
            ("/\u{0}/evil.com", "/evil.com"),
            ("/\u{b}/evil.com", "/evil.com"),
            ("/\r\n/evil.com", "/evil.com"),
            ("/\u{7f}/evil.com", "/evil.com"),
            ("\t//evil.com", "/evil.com"),
            ("/\t\\evil.com", "/evil.com"),
            ("https:/\t/evil.com/a", "/a"),
            ("", "/"),
        ] {
            assert_eq!(local_target(hostile), expected, "{hostile:?}");
        }
    }

    #[test]
    fn encoded_next_starts_with_one_slash_whatever_the_input() {
        for hostile in ["//evil.com", "/\\evil.com", "https://evil.com//x", "///x"] {
            let url = login_url(None, Some(hostile));
            let next = url.split_once("next=").unwrap().1;
            assert!(next.starts_with('/'), "{url}");
            assert!(
                !next.starts_with("//") && !next.starts_with("/%5C"),
                "{url}"
            );
        }
    }

    #[test]
    fn a_huge_target_sends_to_the_front_page() {
        assert_eq!(local_target(&"/a".repeat(5000)), "/");
    }
}
