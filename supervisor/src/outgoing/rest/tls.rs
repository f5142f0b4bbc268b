//! The rustls client configuration of an `https://` connection: the trusted roots
//! (`tls.ca_file`, else the system's), the client certificate, and `verify: false`; and
//! that of an OAuth2 token endpoint (always verified, the system's roots plus
//! `tls.ca_file`'s, no client certificate). The system's roots are loaded once per process.

use std::io::BufReader;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::model::outgoing::TlsOptions;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsBuildError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("the system's CA certificates could not be loaded: {0}")]
    NativeRoots(String),
    #[error("no usable CA certificate{0}")]
    NoRoots(String),
    #[error("client_cert_file and client_key_file go together")]
    HalfClientCert,
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(what: &'static str, path: &str) -> Result<BufReader<std::fs::File>, TlsBuildError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsBuildError::Read {
            what,
            path: path.to_owned(),
            source,
        })
}

fn certs(what: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsBuildError> {
    let read = |source| TlsBuildError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = rustls_pemfile::certs(&mut read_pem(what, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsBuildError::Empty {
            what,
            path: path.to_owned(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, TlsBuildError> {
    const WHAT: &str = "client_key_file";
    rustls_pemfile::private_key(&mut read_pem(WHAT, path)?)
        .map_err(|source| TlsBuildError::Read {
            what: WHAT,
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsBuildError::Empty {
            what: WHAT,
            path: path.to_owned(),
            expected: "PEM private key",
        })
}

/// The system's CA certificates, loaded once per process.
fn native_roots() -> Result<&'static [CertificateDer<'static>], TlsBuildError> {
    static NATIVE: OnceLock<Result<Vec<CertificateDer<'static>>, String>> = OnceLock::new();
    NATIVE
        .get_or_init(|| rustls_native_certs::load_native_certs().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| TlsBuildError::NativeRoots(e.clone()))
}

/// The client configuration of an OAuth2 token endpoint: the client secret goes there, so
/// the server is always verified, against the system's roots plus those of `opts.ca_file`
/// (a connection's private CA does not stop a public identity provider from being
/// trusted); no client certificate is shown.
pub fn token_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsBuildError> {
    let provider = provider();
    let builder =
        ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let mut roots = RootCertStore::empty();
    // A missing system bundle is only fatal when no ca_file gives roots either.
    let native = native_roots();
    if let Ok(native) = native {
        roots.add_parsable_certificates(native.iter().cloned());
    }
    if let Some(path) = &opts.ca_file {
        roots.add_parsable_certificates(certs("ca_file", path)?);
    }
    if roots.is_empty() {
        native?;
        return Err(TlsBuildError::NoRoots(
            " among the system's or in tls.ca_file".into(),
        ));
    }
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration for `opts` (`name` only for the warning of `verify: false`).
pub fn client_config(name: &str, opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsBuildError> {
    client_config_for("REST connection", name, opts, &[b"http/1.1"])
}

/// [`client_config`] for any kind of connection: `what` names the kind in the warning of
/// `verify: false` ("AMQP connection"), `alpn` the protocols offered (none for AMQP).
pub fn client_config_for(
    what: &str,
    name: &str,
    opts: &TlsOptions,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsBuildError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if opts.verify {
        let mut roots = RootCertStore::empty();
        match &opts.ca_file {
            Some(path) => {
                let (added, _) = roots.add_parsable_certificates(certs("ca_file", path)?);
                if added == 0 {
                    return Err(TlsBuildError::NoRoots(format!(" in ca_file {path}")));
                }
            }
            None => {
                let (added, _) = roots.add_parsable_certificates(native_roots()?.iter().cloned());
                if added == 0 {
                    return Err(TlsBuildError::NoRoots(" among the system's".into()));
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        tracing::warn!(
            connection = name,
            "{what} {name:?}: tls.verify is false, any server certificate is accepted"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(
                provider.signature_verification_algorithms,
            )))
    };
    let mut config = match (&opts.client_cert_file, &opts.client_key_file) {
        (Some(cert), Some(key_path)) => {
            builder.with_client_auth_cert(certs("client_cert_file", cert)?, key(key_path)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsBuildError::HalfClientCert),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `tls.verify: false`: any certificate and name are accepted; the handshake's signatures
/// are still checked (a server must hold the key of the certificate it shows).
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
