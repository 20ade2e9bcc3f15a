//! What a refused server certificate means, in words that name the setting
//! to change: shared by the warehouse's and the MySQL servers' connections.

use std::error::Error as StdError;
use std::path::Path;

use rustls::CertificateError;

/// The names a message about one connection's certificate uses.
pub(crate) struct Advice<'a> {
    /// The host the connection was made to.
    pub host: &'a str,
    /// The setting that holds the host.
    pub host_setting: &'a str,
    /// The CA file the chain was checked against, if one was set.
    pub roots: Option<&'a Path>,
    /// The setting that holds the CA file.
    pub roots_setting: &'a str,
    /// The setting and value that check the CA alone.
    pub ca_only: &'a str,
}

/// The certificate problem somewhere in `err`'s chain of causes (rustls'
/// error directly, or inside the I/O error of the handshake), explained.
pub(crate) fn certificate_problem(
    err: &(dyn StdError + 'static),
    advice: &Advice<'_>,
) -> Option<String> {
    certificate_error(err).map(|problem| explain(problem, advice))
}

/// The first name a certificate refused for not naming the host does give,
/// when that is why `err` happened. rustls checks the chain before the
/// name, so such a certificate was signed by a trusted CA.
pub(crate) fn presented_name(err: &(dyn StdError + 'static)) -> Option<String> {
    match certificate_error(err)? {
        CertificateError::NotValidForNameContext { presented, .. } => {
            presented.first().map(|name| plain_name(name).to_string())
        }
        _ => None,
    }
}

fn certificate_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a CertificateError> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn StdError + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(problem)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                return Some(problem);
            }
        }
        cause = e.source();
    }
    None
}

fn explain(problem: &CertificateError, advice: &Advice<'_>) -> String {
    let Advice {
        host,
        host_setting,
        roots_setting,
        ca_only,
        ..
    } = advice;
    let roots = match advice.roots {
        Some(path) => format!("{roots_setting} ({})", path.display()),
        None => format!("the Mozilla roots ({roots_setting} is not set)"),
    };
    match problem {
        CertificateError::UnknownIssuer => format!(
            "the server's certificate is not signed by a CA in {roots}; set {roots_setting} to \
             the CA certificate that signed it"
        ),
        CertificateError::NotValidForName => format!(
            "the server's certificate does not name `{host}`; set {host_setting} to a name it \
             lists, or {ca_only} to check the CA alone"
        ),
        CertificateError::NotValidForNameContext { presented, .. } if presented.is_empty() => {
            format!(
                "the server's certificate does not name `{host}`: it names no host in its \
                 subjectAltName extension; reissue it with the server's names there"
            )
        }
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "the server's certificate does not name `{host}` (it names {}); set {host_setting} \
             to one of those, or {ca_only} to check the CA alone",
            presented
                .iter()
                .map(|name| plain_name(name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired (or this machine's clock is wrong); renew the \
             server's certificate"
                .to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet; check this machine's clock".to_string()
        }
        other => format!("the server's certificate was refused ({other:?})"),
    }
}

/// A name rustls presents as `DnsName("host")` or `IpAddress(1.2.3.4)`,
/// as a person writes it.
fn plain_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn advice() -> Advice<'static> {
        Advice {
            host: "db.clinic.example",
            host_setting: "HOST",
            roots: None,
            roots_setting: "ROOT",
            ca_only: "MODE=verify-ca",
        }
    }

    fn refused(problem: CertificateError) -> rustls::Error {
        rustls::Error::InvalidCertificate(problem)
    }

    #[test]
    fn a_name_mismatch_lists_the_names_the_certificate_gives() {
        let err = refused(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("db.clinic.example").unwrap(),
            presented: vec![
                "DnsName(\"localhost\")".into(),
                "IpAddress(127.0.0.1)".into(),
            ],
        });
        let why = certificate_problem(&err, &advice()).unwrap();
        assert!(
            why.contains("does not name `db.clinic.example` (it names localhost, 127.0.0.1)"),
            "{why}"
        );
        assert_eq!(presented_name(&err).as_deref(), Some("localhost"));
        let inside_io = std::io::Error::other(err);
        assert_eq!(presented_name(&inside_io).as_deref(), Some("localhost"));
    }

    #[test]
    fn a_certificate_without_names_and_other_refusals_say_so() {
        let err = refused(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("db.clinic.example").unwrap(),
            presented: vec![],
        });
        let why = certificate_problem(&err, &advice()).unwrap();
        assert!(why.contains("names no host in its subjectAltName"), "{why}");
        assert_eq!(presented_name(&err), None);
        let expired = refused(CertificateError::Expired);
        assert!(
            certificate_problem(&expired, &advice())
                .unwrap()
                .contains("has expired")
        );
        assert_eq!(presented_name(&expired), None);
        let unknown = refused(CertificateError::UnknownIssuer);
        assert!(
            certificate_problem(&unknown, &advice())
                .unwrap()
                .contains("the Mozilla roots (ROOT is not set)")
        );
        let other = std::io::Error::other("connection reset");
        assert_eq!(certificate_problem(&other, &advice()), None);
    }
}
