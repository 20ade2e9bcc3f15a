//! TLS to the warehouse: libpq's `sslmode` meanings on rustls, through
//! `tokio-postgres-rustls`, and errors that say which check failed.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as Wire;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{PgSettings, PgSslMode};
use crate::error::{Error, Result};

const ROOT_CERT: &str = "POSTGRES_ANALYTICS_SSL_ROOT_CERT";

/// The connector and the `sslmode` tokio-postgres negotiates with.
pub(super) fn connector(settings: &PgSettings) -> Result<(MakeRustlsConnect, Wire)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root = settings.ssl_root_cert.as_deref();
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.ssl_mode, root) {
        (PgSslMode::VerifyFull, _) => chain_verifier(root, &provider)?,
        (PgSslMode::Disable | PgSslMode::Prefer | PgSslMode::Require, None) => {
            Arc::new(NoNameCheck {
                chain: None,
                provider: provider.clone(),
            })
        }
        _ => Arc::new(NoNameCheck {
            chain: Some(chain_verifier(root, &provider)?),
            provider: provider.clone(),
        }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("setting up TLS for the warehouse: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &settings.ssl_client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = read_certificates("POSTGRES_ANALYTICS_SSL_CERT", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::config(format!(
                    "POSTGRES_ANALYTICS_SSL_KEY names {}, which holds no readable private key (PEM): {e}",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                Error::config(format!(
                    "POSTGRES_ANALYTICS_SSL_CERT and POSTGRES_ANALYTICS_SSL_KEY do not make a client identity: {e}"
                ))
            })?
        }
    };
    let wire = match settings.ssl_mode {
        PgSslMode::Disable => Wire::Disable,
        PgSslMode::Prefer => Wire::Prefer,
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => Wire::Require,
    };
    Ok((MakeRustlsConnect::new(config), wire))
}

/// Checks the chain to the root certificate (or the Mozilla roots) and the
/// host name.
fn chain_verifier(
    root: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let roots = match root {
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(read_certificates(ROOT_CERT, path)?);
            if added == 0 {
                return Err(Error::config(format!(
                    "{ROOT_CERT} names {}, which holds no usable CA certificate",
                    path.display()
                )));
            }
            store
        }
    };
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::config(format!("setting up the warehouse's certificate check: {e}")))
}

fn read_certificates(variable: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable = |e: rustls::pki_types::pem::Error| {
        Error::config(format!(
            "{variable} names {}, which cannot be read as PEM certificates: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{variable} names {}, which holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The certificate check of `verify-ca` (the chain, not the name) and of
/// `prefer` and `require` without a root certificate (nothing); the
/// handshake's signatures are checked either way.
#[derive(Debug)]
struct NoNameCheck {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The name is checked after the chain: a wrong name means a good chain.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a failed TLS connection to the warehouse means and what to set,
/// when the failure is about TLS.
pub(super) fn explain(err: &tokio_postgres::Error, settings: &PgSettings) -> Option<String> {
    let advice = crate::tls::Advice {
        host: &settings.host,
        host_setting: "POSTGRES_ANALYTICS_HOST",
        roots: settings.ssl_root_cert.as_deref(),
        roots_setting: ROOT_CERT,
        ca_only: "POSTGRES_ANALYTICS_SSL_MODE=verify-ca",
    };
    if let Some(why) = crate::tls::certificate_problem(err, &advice) {
        return Some(why);
    }
    let text = err.to_string();
    if text.contains("server does not support TLS") {
        return Some(format!(
            "POSTGRES_ANALYTICS_SSL_MODE is {}, but the server does not offer TLS; turn on `ssl` \
             in the server's postgresql.conf, or lower POSTGRES_ANALYTICS_SSL_MODE",
            settings.ssl_mode.name()
        ));
    }
    let db = err.as_db_error()?;
    (db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        && db.message().contains("no encryption"))
    .then(|| {
        "the server accepts only TLS connections from here (hostssl); set \
         POSTGRES_ANALYTICS_SSL_MODE to verify-full (with POSTGRES_ANALYTICS_SSL_ROOT_CERT) or require"
            .to_string()
    })
}
