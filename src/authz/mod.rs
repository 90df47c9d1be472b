//! The one authorization core behind every gateway: finds the credential (header strategies,
//! then the session cookie), decides allow / deny / throttled once, and shapes the identity
//! headers and the refusal every gateway adapter (`http::authz` for nginx, Caddy and Traefik;
//! `grpc::ext_authz` for Envoy) only translates.

pub mod credentials;
pub mod login;

use std::{net::IpAddr, sync::Arc, time::Instant};

pub use credentials::HeaderSource;

use crate::{
    accounts::{self, Accounts, AccountsError, Context},
    metrics::Metrics,
    store::{Principal, TokenKind},
};

/// The identity headers a gateway copies to the upstream, and strips from clients.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-organization",
    "remote-auth",
];

/// Prefix of the headers the upstream trusts; a client's own are never passed on.
pub const IDENTITY_PREFIX: &str = "remote-";

/// What a gateway asked about: which adapter answers, and how the request looked.
pub struct Check<'a, H> {
    pub endpoint: &'static str,
    pub headers: &'a H,
    pub client: IpAddr,
}

/// How the caller proved who it is, as `Remote-Auth` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiToken,
    Session,
    AccessToken,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiToken => "api-token",
            Self::Session => "session",
            Self::AccessToken => "access-token",
        }
    }
}

/// Who is calling, as the upstream is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub email: String,
    /// First and last name, possibly empty.
    pub name: String,
    pub organization_id: i64,
    pub method: AuthMethod,
}

impl Identity {
    /// The `Remote-*` headers, lowercase names, values free of control characters.
    pub fn headers(&self) -> [(&'static str, String); 5] {
        [
            (IDENTITY_HEADERS[0], self.user_id.to_string()),
            (IDENTITY_HEADERS[1], header_text(&self.email)),
            (IDENTITY_HEADERS[2], header_text(&self.name)),
            (IDENTITY_HEADERS[3], self.organization_id.to_string()),
            (IDENTITY_HEADERS[4], self.method.as_str().to_owned()),
        ]
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials at all.
    Missing,
    /// Malformed, unknown, reset, expired or logged-out credentials.
    Invalid { reason: &'static str },
    /// A live account whose membership was removed.
    NotAMember,
    /// Too many recent failures from this client.
    Throttled { retry_after_seconds: u64 },
    /// The database can't be reached (or the service is starting).
    Unavailable,
}

impl Denial {
    /// The stable reason, as the gRPC API names it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "CREDENTIALS_MISSING",
            Self::Invalid { reason } => reason,
            Self::NotAMember => "NOT_A_MEMBER",
            Self::Throttled { .. } => "THROTTLED",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Self::Missing => "authentication credentials were not provided",
            Self::Invalid { .. } => "the credentials are invalid or expired",
            Self::NotAMember => "the caller is not a member of an organization",
            Self::Throttled { .. } => "too many failed attempts; retry later",
            Self::Unavailable => "the service is starting or its database is unavailable",
        }
    }

    /// Whether logging in again is the way out, so a browser is sent to the login page.
    pub fn needs_login(&self) -> bool {
        matches!(self, Self::Missing | Self::Invalid { .. })
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::Missing => "no_credentials",
            Self::Invalid { .. } => "unauthenticated",
            Self::NotAMember => "forbidden",
            Self::Throttled { .. } => "throttled",
            Self::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Identity),
    Deny(Denial),
}

/// How an adapter's gateway treats answers: nginx's `auth_request` turns anything but 2xx, 401
/// and 403 into a server error, so it gets only those; the others pass any status through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    AuthRequest,
    ForwardAuth,
}

/// A refusal as the gateway passes it to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Seconds a client waits before retrying while the database is away.
const UNAVAILABLE_RETRY_SECONDS: u64 = 5;

/// The challenge of a 401: both schemes the service accepts in `Authorization`.
const CHALLENGE: &str = "Token realm=\"label-studio\", Bearer realm=\"label-studio\"";

#[derive(Clone)]
pub struct Authorizer {
    accounts: Accounts,
    metrics: Arc<Metrics>,
    cookie_name: Arc<str>,
    public_url: Option<Arc<str>>,
}

impl Authorizer {
    pub fn new(
        accounts: Accounts,
        metrics: Arc<Metrics>,
        cookie_name: &str,
        public_url: Option<&str>,
    ) -> Self {
        Self {
            accounts,
            metrics,
            cookie_name: cookie_name.into(),
            public_url: public_url.map(Into::into),
        }
    }

    /// The key set that verifies access tokens, as JSON.
    pub fn jwks(&self) -> String {
        self.accounts.jwks()
    }

    /// Decides a request once, whichever gateway asks. Without credentials it touches neither
    /// the database nor the throttle; invalid ones count toward the client's token throttle.
    pub async fn check<H: HeaderSource>(&self, check: Check<'_, H>) -> Decision {
        let started = Instant::now();
        let decision = match self.decide(&check).await {
            Ok(identity) => Decision::Allow(identity),
            Err(denial) => Decision::Deny(denial),
        };
        let outcome = match &decision {
            Decision::Allow(_) => "allowed",
            Decision::Deny(denial) => {
                if matches!(denial, Denial::Invalid { .. } | Denial::Throttled { .. }) {
                    self.metrics.auth_failure(denial.reason());
                }
                denial.outcome()
            }
        };
        self.metrics
            .gateway_check(check.endpoint, outcome, started.elapsed());
        tracing::debug!(endpoint = check.endpoint, outcome, "gateway check");
        decision
    }

    async fn decide<H: HeaderSource>(&self, check: &Check<'_, H>) -> Result<Identity, Denial> {
        let found = match credentials::from_headers(check.headers) {
            Ok(None) => credentials::from_cookie(check.headers, &self.cookie_name),
            other => other,
        };
        let credentials = found.map_err(denial)?.ok_or(Denial::Missing)?;
        let ctx = Context {
            now: accounts::now(),
            deadline: None,
            client: check.client,
        };
        let principal = self
            .accounts
            .caller(&credentials, &ctx)
            .await
            .map_err(denial)?;
        identity(&principal)
    }

    /// The refusal a gateway passes on: for a browser (`browser`) that needs to log in, the way
    /// to the login page (a 302 where the gateway passes redirects on; a 401 with `Location`
    /// for nginx, whose configuration turns it into the redirect).
    pub fn refusal(
        &self,
        denial: &Denial,
        style: Style,
        browser: bool,
        original: Option<&str>,
    ) -> Refusal {
        let mut headers = vec![("cache-control", "no-store".to_owned())];
        let login = (browser && denial.needs_login())
            .then(|| login::login_url(self.public_url.as_deref(), original));
        let status = match (denial, style) {
            (Denial::NotAMember, _) => 403,
            (_, Style::AuthRequest) => 401,
            (_, Style::ForwardAuth) if login.is_some() => 302,
            (Denial::Missing | Denial::Invalid { .. }, Style::ForwardAuth) => 401,
            (Denial::Throttled { .. }, Style::ForwardAuth) => 429,
            (Denial::Unavailable, Style::ForwardAuth) => 503,
        };
        if status == 401 {
            headers.push(("www-authenticate", CHALLENGE.to_owned()));
        }
        match denial {
            Denial::Throttled {
                retry_after_seconds,
            } => headers.push(("retry-after", retry_after_seconds.to_string())),
            Denial::Unavailable => {
                headers.push(("retry-after", UNAVAILABLE_RETRY_SECONDS.to_string()));
            }
            _ => {}
        }
        if let Some(login) = login {
            headers.push(("location", login));
        }
        let body = if status == 302 {
            String::new()
        } else {
            headers.push(("content-type", "application/json".to_owned()));
            serde_json::json!({ "detail": denial.message(), "reason": denial.reason() }).to_string()
        };
        Refusal {
            status,
            headers,
            body,
        }
    }
}

/// Whether a request is a browser's page navigation: its `Accept` names HTML.
pub fn is_browser(headers: &impl HeaderSource) -> bool {
    headers.values("accept").any(|accept| {
        accept
            .windows(b"text/html".len())
            .any(|window| window.eq_ignore_ascii_case(b"text/html"))
    })
}

/// The original request's target as HTTP gateways describe it: Caddy and Traefik with
/// `X-Forwarded-Uri`, ingress-nginx with `X-Original-URL`, plain nginx configs with
/// `X-Original-URI`.
pub fn original_target(headers: &impl HeaderSource) -> Option<&str> {
    ["x-forwarded-uri", "x-original-url", "x-original-uri"]
        .into_iter()
        .find_map(|name| headers.text(name))
}

fn identity(principal: &Principal) -> Result<Identity, Denial> {
    let organization = principal
        .account
        .organization
        .as_ref()
        .ok_or(Denial::NotAMember)?;
    let user = &principal.account.user;
    let name = format!("{} {}", user.first_name.trim(), user.last_name.trim());
    Ok(Identity {
        user_id: user.id,
        email: user.email.clone(),
        name: name.trim().to_owned(),
        organization_id: organization.id,
        method: match principal.kind {
            TokenKind::Api => AuthMethod::ApiToken,
            TokenKind::Session => AuthMethod::Session,
            TokenKind::Access => AuthMethod::AccessToken,
        },
    })
}

fn denial(error: AccountsError) -> Denial {
    match error {
        AccountsError::NotAMember => Denial::NotAMember,
        AccountsError::Throttled { retry_after } => Denial::Throttled {
            // Whole seconds, rounded up, so a client never retries too early.
            retry_after_seconds: (retry_after.as_secs()
                + u64::from(retry_after.subsec_nanos() > 0))
            .max(1),
        },
        AccountsError::Unavailable(cause) => {
            if let Some(cause) = cause {
                tracing::warn!(error = ?cause, "database unavailable");
            }
            Denial::Unavailable
        }
        error @ (AccountsError::TokenInvalid
        | AccountsError::LegacyTokensDisabled
        | AccountsError::InvalidCredentials
        | AccountsError::CredentialsMissing
        | AccountsError::CredentialsMalformed(_)) => Denial::Invalid {
            reason: error.reason(),
        },
        other => {
            tracing::error!(error = ?other, "gateway check failed");
            Denial::Unavailable
        }
    }
}

/// A header value without control characters (a name imported from elsewhere may hold any),
/// so no value can end a header line or smuggle another.
fn header_text(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_carry_no_control_characters() {
        let identity = Identity {
            user_id: 7,
            email: "ann@example.com".into(),
            name: "Ann\r\nX-Injected: 1\u{7f}\u{85} Lee".into(),
            organization_id: 1,
            method: AuthMethod::Session,
        };
        for (name, value) in identity.headers() {
            assert!(!value.chars().any(char::is_control), "{name}: {value:?}");
        }
        assert_eq!(identity.headers()[2].1, "AnnX-Injected: 1 Lee");
        assert_eq!(identity.headers()[4].1, "session");
    }

    #[test]
    fn browsers_are_told_by_their_accept_header() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_browser(&headers));
        headers.insert("accept", "application/json".parse().unwrap());
        assert!(!is_browser(&headers));
        headers.insert(
            "accept",
            "Text/HTML,application/xhtml+xml;q=0.9,*/*;q=0.8"
                .parse()
                .unwrap(),
        );
        assert!(is_browser(&headers));
    }
}
