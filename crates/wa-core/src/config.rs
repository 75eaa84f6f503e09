//! Configuration values that are validated once, at start, and that never
//! print a secret.

use std::fmt;
use std::str::FromStr;

/// Prefix of every exchange, queue and Redis key of one deployment, so that
/// several deployments or test runs share one broker and one Redis.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{ns}.{suffix}`: the name of an exchange or queue.
    pub fn amqp(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.0)
    }

    /// `{ns}:{suffix}`: a Redis key.
    pub fn redis(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.0)
    }
}

impl FromStr for Namespace {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let valid = !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(format!(
                "{value:?} is not a namespace: use 1 to 64 ASCII letters, digits, '-' or '_'"
            ))
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.0)
    }
}

/// A connection URL whose password is shown as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    /// The full URL, password included: only for handing to a client library.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }

    fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        shown.to_string()
    }
}

impl FromStr for SecretUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        // The parse error never echoes the input: it may hold a password.
        url::Url::parse(value)
            .map(Self)
            .map_err(|e| format!("not a valid URL ({e})"))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

/// One or more connection URLs, written comma-separated (`AMQP_URL` of a
/// RabbitMQ cluster, `REDIS_URL` seeds of a Redis Cluster); prints redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrls(Vec<SecretUrl>);

impl SecretUrls {
    pub fn urls(&self) -> &[SecretUrl] {
        &self.0
    }

    /// The first URL: the only one of a single-node setting.
    pub fn first(&self) -> &SecretUrl {
        &self.0[0]
    }

    /// All URLs, passwords included, as they were written: only for handing
    /// to a child process or a client library.
    pub fn expose(&self) -> String {
        self.0
            .iter()
            .map(SecretUrl::expose)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl From<SecretUrl> for SecretUrls {
    fn from(url: SecretUrl) -> Self {
        Self(vec![url])
    }
}

impl FromStr for SecretUrls {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let urls = value
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .enumerate()
            .map(|(index, part)| {
                part.parse::<SecretUrl>()
                    .map_err(|reason| format!("URL number {} {reason}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err("empty (give at least one URL)".to_owned());
        }
        Ok(Self(urls))
    }
}

impl fmt::Display for SecretUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(SecretUrl::redacted).collect();
        f.write_str(&shown.join(","))
    }
}

impl fmt::Debug for SecretUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrls({self})")
    }
}

/// Parses a value that may hold a password ([`SecretUrl`], [`SecretUrls`])
/// for clap: the error names the variable and says why, never echoing the
/// value. Those types use it by default (no `value_parser` attribute).
#[derive(Debug)]
pub struct SecretParser<T>(std::marker::PhantomData<fn() -> T>);

impl<T> SecretParser<T> {
    pub const fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T> Default for SecretParser<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for SecretParser<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> clap::builder::TypedValueParser for SecretParser<T>
where
    T: FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        parse_secret(arg, value)
    }
}

/// Options of these types parse with [`SecretParser`] without saying so.
macro_rules! parsed_as_secret {
    ($($secret:ty),*) => {$(
        impl clap::builder::ValueParserFactory for $secret {
            type Parser = SecretParser<$secret>;

            fn value_parser() -> Self::Parser {
                SecretParser::new()
            }
        }
    )*};
}
parsed_as_secret!(SecretUrl, SecretUrls);

fn parse_secret<T: FromStr<Err = String>>(
    arg: Option<&clap::Arg>,
    value: &std::ffi::OsStr,
) -> Result<T, clap::Error> {
    let name = arg
        .and_then(|a| {
            a.get_value_names()
                .and_then(|n| n.first().map(|n| n.to_string()))
        })
        .unwrap_or_else(|| "the URL".to_owned());
    let invalid = |kind, reason: String| clap::Error::raw(kind, format!("{name} is {reason}\n"));
    let text = value
        .to_str()
        .ok_or_else(|| invalid(clap::error::ErrorKind::InvalidUtf8, "not UTF-8".to_owned()))?;
    text.parse::<T>()
        .map_err(|reason| invalid(clap::error::ErrorKind::ValueValidation, reason))
}

/// A secret string (app secret, verify token) that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretString {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            Err("must not be empty".to_owned())
        } else {
            Ok(Self(value.to_owned()))
        }
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A PEM file's text, read at start; the error names the variable and the path.
pub fn read_pem_file(variable: &str, path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{variable} {}: cannot read it: {e}", path.display()))?;
    if !text.contains("-----BEGIN ") {
        return Err(format!("{variable} {}: not a PEM file", path.display()));
    }
    Ok(text)
}

/// A client certificate and its key, as PEM text, from two options that go
/// together (each a variable and the path it gives): both set, or neither.
pub fn read_client_pem_pair(
    cert: (&str, Option<&std::path::Path>),
    key: (&str, Option<&std::path::Path>),
) -> Result<Option<(String, String)>, String> {
    match (cert.1, key.1) {
        (None, None) => Ok(None),
        (Some(cert_path), Some(key_path)) => Ok(Some((
            read_pem_file(cert.0, cert_path)?,
            read_pem_file(key.0, key_path)?,
        ))),
        (Some(_), None) => Err(format!("{} is set without {}", cert.0, key.0)),
        (None, Some(_)) => Err(format!("{} is set without {}", key.0, cert.0)),
    }
}

/// Parses a duration: humantime's units (`250ms`, `5s`, `2m`, `1h`, `7d`,
/// also combined: `1h 30m`) or plain seconds (`30`). Overflow is an error.
pub fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|_| format!("{value:?} is too many seconds"));
    }
    humantime::parse_duration(value).map_err(|error| {
        format!("{value:?} is not a duration such as 250ms, 5s, 2m, 1h or 7d ({error})")
    })
}

/// The shortest exact text for a duration, for queue names: `5s`, `250ms`, `2m`.
pub fn format_duration(duration: std::time::Duration) -> String {
    let ms = duration.as_millis();
    if ms > 0 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms > 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_print_their_password() {
        let url: SecretUrl = "amqp://guest:hunter2@127.0.0.1:5672/%2f".parse().unwrap();
        assert!(!format!("{url}").contains("hunter2"));
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(url.expose().contains("hunter2"));
        assert!(!format!("{:?}", SecretString::new("s3cret")).contains("s3cret"));
    }

    #[test]
    fn url_lists_split_on_commas_and_hide_passwords() {
        let urls: SecretUrls = "amqp://u:p1@a:5672/%2f, amqp://u:p2@b:5672/%2f"
            .parse()
            .unwrap();
        assert_eq!(urls.urls().len(), 2);
        assert_eq!(urls.first().url().host_str(), Some("a"));
        let shown = format!("{urls} {urls:?}");
        assert!(!shown.contains("p1") && !shown.contains("p2"), "{shown}");
        assert!(urls.expose().contains("p2"));
        let single: SecretUrls = "redis://127.0.0.1:6379/".parse().unwrap();
        assert_eq!(single.urls().len(), 1);
        assert!("".parse::<SecretUrls>().is_err());
        assert!(
            "amqp://a, not a url"
                .parse::<SecretUrls>()
                .unwrap_err()
                .contains("number 2")
        );
    }

    #[test]
    fn namespaces_are_plain_names() {
        assert!("wa".parse::<Namespace>().is_ok());
        assert!("test_1-a".parse::<Namespace>().is_ok());
        for bad in ["", "a.b", "a b", "a:b", &"x".repeat(65)] {
            assert!(bad.parse::<Namespace>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_round_trip() {
        for text in ["250ms", "5s", "30s", "2m", "10m", "1h"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn every_duration_accepted_before_is_still_accepted_and_days_too() {
        use std::time::Duration;
        let cases = [
            ("0", Duration::ZERO),
            ("7", Duration::from_secs(7)),
            (" 30 ", Duration::from_secs(30)),
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("24h", Duration::from_secs(86_400)),
            ("1d", Duration::from_secs(86_400)),
            ("7days", Duration::from_secs(7 * 86_400)),
            ("1h 30m", Duration::from_secs(5400)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn junk_and_overflow_are_errors_that_quote_the_value() {
        for bad in [
            "",
            "5 parsecs",
            "-5s",
            "s",
            "1.5.3s",
            "99999999999999999999999s",
        ] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains(&format!("{:?}", bad.trim())), "{error}");
        }
        assert!(parse_duration("99999999999999999999999").is_err());
    }
}
